//! Applies the room part of a plan, after the accounts: ledger-only steps first (rooms found,
//! memberships forgotten), then creations (spaces before their children) and links one by
//! one, then joins, power levels (one read-merge-write per room) and removals with bounded
//! concurrency. Each success is recorded in the ledger with its audit entry, so a crash
//! resumes without repeating a join; a failure is audited and counted, and the rest goes on.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::stream::{self, StreamExt};

use super::journal;
use crate::clock::Clock;
use crate::directory::StableId;
use crate::homeserver::{Homeserver, HomeserverError, NewRoom, Rooms};
use crate::ledger::{AuditEntry, Ledger, LedgerError, MembershipRecord, PowerRecord, RoomRecord};
use crate::mapping::rooms::JoinRule;
use crate::plan::memberships::{RoomAction, RoomPlan};

/// What happened to the room actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomReport {
    pub applied: usize,
    pub created: usize,
    pub joined: usize,
    pub removed: usize,
    /// Ledger-only: rooms found and recorded, memberships forgotten.
    pub adopted: usize,
    pub forgotten: usize,
    /// (room, mxid or `-`, action name, error) of every action that failed.
    pub failed: Vec<(String, String, String, String)>,
    /// How long the join phase took, in milliseconds (for a joins/s figure).
    pub join_ms: u64,
    /// Actions left out because their account was not made this run, or because the
    /// homeserver client stopped sending (not answering, deadline): for the next run.
    pub not_tried: usize,
}

impl RoomReport {
    /// Joins per second over the join phase.
    pub fn joins_per_sec(&self) -> f64 {
        self.joined as f64 * 1000.0 / self.join_ms.max(1) as f64
    }
}

/// Applies `plan` (see the module documentation), except the actions of the accounts in
/// `absent` (to be made this run, and not made). Only a ledger failure is an `Err`.
pub async fn apply_rooms<H: Homeserver + Rooms>(
    plan: &RoomPlan,
    homeserver: &H,
    ledger: &Ledger,
    clock: &dyn Clock,
    concurrency: usize,
    absent: &HashSet<&str>,
) -> Result<RoomReport, LedgerError> {
    let mut report = RoomReport::default();
    let without_absent;
    let plan = if absent.is_empty() {
        plan
    } else {
        let mut kept = plan.clone();
        kept.actions
            .retain(|a| !a.mxid().is_some_and(|m| absent.contains(m)));
        report.not_tried = plan.actions.len() - kept.actions.len();
        without_absent = kept;
        &without_absent
    };
    let r = &Runner {
        homeserver,
        ledger,
        clock,
    };
    for a in &plan.adopt {
        let record = RoomRecord {
            key: a.room.clone(),
            room_id: a.room_id.clone(),
            created: false,
            space: a.space,
            rule: a.rule.clone(),
            mode: a.mode,
            parent: None,
            at: clock.now(),
        };
        let why = format!("{} exists on the homeserver ({})", a.room, a.room_id);
        ledger.record_room(&record, &r.audit(&a.room, None, "adopt_room", &why, "ok"))?;
        report.adopted += 1;
    }
    for f in &plan.forget {
        let entry = r.audit(&f.mxid, Some(&f.id), "forget_membership", &f.reason, "ok");
        ledger.remove_membership(&f.room, &f.id, &entry)?;
        report.forgotten += 1;
    }
    let mut server_name = None;
    // Creations and links, in plan order (parents first).
    for action in &plan.actions {
        let result = match action {
            RoomAction::CreateRoom { .. } => r.create(action).await,
            RoomAction::LinkSpace { room, parent, .. } => {
                if server_name.is_none() {
                    server_name = Some(r.server_name().await);
                }
                match &server_name {
                    Some(Ok(name)) => r.link(room, parent, name, action).await,
                    Some(Err(e)) => Err(e.clone().into()),
                    None => Ok(()),
                }
            }
            _ => continue,
        };
        r.tally(action, result, &mut report)?;
    }
    // Joins, then power levels (per room), then removals.
    let started = Instant::now();
    let done = &AtomicUsize::new(0);
    let joins: Vec<&RoomAction> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, RoomAction::Join { .. }))
        .collect();
    let total = joins.len();
    journal_before(ledger, &joins, clock)?;
    let progress = &|done: &AtomicUsize| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(100) || n == total {
            let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                done = n,
                total,
                per_sec = format!("{rate:.1}"),
                "room joins"
            );
        }
    };
    let results: Vec<_> = stream::iter(joins)
        .map(|a| async move {
            let result = r.member(a).await;
            progress(done);
            (a, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    report.join_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    for (a, result) in results {
        r.tally(a, result, &mut report)?;
    }
    let mut by_room: BTreeMap<&str, Vec<&RoomAction>> = BTreeMap::new();
    for a in &plan.actions {
        if matches!(a, RoomAction::SetPower { .. }) {
            by_room.entry(a.room()).or_default().push(a);
        }
    }
    let powers: Vec<&RoomAction> = by_room.values().flatten().copied().collect();
    journal_before(ledger, &powers, clock)?;
    let results: Vec<_> = stream::iter(by_room)
        .map(|(room, actions)| async move { (actions.clone(), r.power(room, &actions).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (actions, result) in results {
        // One write per room: its outcome is each of its actions' outcome.
        let failure = match result {
            Ok(()) => None,
            Err(Step::Ledger(e)) => return Err(e),
            Err(step) => Some(step),
        };
        for a in actions {
            let outcome = failure.as_ref().map_or(Ok(()), |step| Err(step.repeat()));
            r.tally(a, outcome, &mut report)?;
        }
    }
    let kicks: Vec<&RoomAction> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, RoomAction::Kick { .. }))
        .collect();
    journal_before(ledger, &kicks, clock)?;
    let results: Vec<_> = stream::iter(kicks)
        .map(|a| async move { (a, r.member(a).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (a, result) in results {
        r.tally(a, result, &mut report)?;
    }
    Ok(report)
}

/// Journals `actions` before any of them is sent (see `super::journal`).
fn journal_before(
    ledger: &Ledger,
    actions: &[&RoomAction],
    clock: &dyn Clock,
) -> Result<(), LedgerError> {
    let now = clock.now();
    let intents: Vec<_> = actions
        .iter()
        .filter_map(|a| journal::room_intent(a, now))
        .collect();
    ledger.intend(&intents)
}

/// Ends the journal entry of `action`: its result is recorded.
fn journal_done(ledger: &Ledger, action: &RoomAction) -> Result<(), LedgerError> {
    match journal::room_intent(action, 0) {
        Some(intent) => ledger.clear_intent(&intent.key()),
        None => Ok(()),
    }
}

/// Why one room action stopped: the homeserver refused (the action fails, the run goes on),
/// the client stopped sending (the action is left for the next run), or the ledger could not
/// record (the run stops).
#[derive(Debug)]
enum Step {
    Failed(String),
    /// The client is halted; the request that was sent and got no answer, if any.
    Halted(Option<String>, String),
    Ledger(LedgerError),
}

impl Step {
    /// The same outcome, for another action settled by the same request.
    fn repeat(&self) -> Step {
        match self {
            Step::Failed(e) => Step::Failed(e.clone()),
            Step::Halted(unanswered, halt) => Step::Halted(unanswered.clone(), halt.clone()),
            Step::Ledger(e) => Step::Failed(e.to_string()),
        }
    }
}

impl From<HomeserverError> for Step {
    fn from(e: HomeserverError) -> Self {
        match e {
            HomeserverError::Halted { halt, unanswered } => {
                Step::Halted(unanswered, halt.to_string())
            }
            e => Step::Failed(e.to_string()),
        }
    }
}

impl From<LedgerError> for Step {
    fn from(e: LedgerError) -> Self {
        Step::Ledger(e)
    }
}

/// The agent a room action is about, if it names one.
fn action_id(action: &RoomAction) -> Option<&StableId> {
    match action {
        RoomAction::Join { id, .. } | RoomAction::SetPower { id, .. } => Some(id),
        RoomAction::Kick { id, .. } => id.as_ref(),
        _ => None,
    }
}

struct Runner<'a, H> {
    homeserver: &'a H,
    ledger: &'a Ledger,
    clock: &'a dyn Clock,
}

impl<H: Homeserver + Rooms> Runner<'_, H> {
    fn audit(
        &self,
        mxid: &str,
        id: Option<&StableId>,
        action: &str,
        reason: &str,
        result: &str,
    ) -> AuditEntry {
        AuditEntry {
            at: self.clock.now(),
            mxid: mxid.to_string(),
            id: id.cloned().unwrap_or_default(),
            action: action.to_string(),
            reason: reason.to_string(),
            result: result.to_string(),
        }
    }

    /// Counts the outcome; audits a failure. A ledger failure ends the run.
    fn tally(
        &self,
        action: &RoomAction,
        result: Result<(), Step>,
        report: &mut RoomReport,
    ) -> Result<(), LedgerError> {
        match result {
            Ok(()) => {
                report.applied += 1;
                match action {
                    RoomAction::CreateRoom { .. } => report.created += 1,
                    RoomAction::Join { .. } => report.joined += 1,
                    RoomAction::Kick { .. } => report.removed += 1,
                    _ => {}
                }
                Ok(())
            }
            Err(Step::Ledger(e)) => Err(e),
            Err(Step::Halted(unanswered, halt)) => {
                report.not_tried += 1;
                if let Some(request) = unanswered {
                    let entry = self.audit(
                        action.mxid().unwrap_or(action.room()),
                        action_id(action),
                        action.name(),
                        action.reason(),
                        &format!("interrupted: {request}; {halt}"),
                    );
                    self.ledger.record_audit(&entry)?;
                }
                Ok(())
            }
            Err(Step::Failed(e)) => {
                let who = action.mxid().unwrap_or("-");
                tracing::warn!(room = action.room(), mxid = who, action = action.name(), error = %e, "room action failed");
                let subject = action.mxid().unwrap_or(action.room());
                let entry = self.audit(
                    subject,
                    action_id(action),
                    action.name(),
                    action.reason(),
                    &format!("error: {e}"),
                );
                self.ledger.record_audit(&entry)?;
                report.failed.push((
                    action.room().to_string(),
                    who.to_string(),
                    action.name().to_string(),
                    e,
                ));
                Ok(())
            }
        }
    }

    async fn server_name(&self) -> Result<String, HomeserverError> {
        let me = self.homeserver.whoami().await?;
        Ok(me.split_once(':').map(|(_, s)| s.to_string()).unwrap_or(me))
    }

    /// The room id of a managed room: from the ledger, else the alias resolved now.
    async fn room_id(&self, key: &str) -> Result<String, Step> {
        if let Some(r) = self.ledger.room(key)? {
            return Ok(r.room_id);
        }
        if key.starts_with('!') {
            return Ok(key.to_string());
        }
        self.homeserver
            .resolve_alias(key)
            .await?
            .ok_or_else(|| Step::Failed(format!("the alias {key} points to no room")))
    }

    async fn create(&self, action: &RoomAction) -> Result<(), Step> {
        let RoomAction::CreateRoom {
            room,
            rule,
            space,
            mode,
            creation,
            reason,
        } = action
        else {
            return Ok(());
        };
        let Some((alias_localpart, alias_server)) =
            room.strip_prefix('#').and_then(|a| a.split_once(':'))
        else {
            return Err(Step::Failed(format!(
                "{room} cannot be created: only a room named by an alias (`#name:server`) can"
            )));
        };
        let server = self.server_name().await?;
        if alias_server != server {
            return Err(Step::Failed(format!(
                "{room} cannot be created here: its alias is on {alias_server}, this homeserver is {server}"
            )));
        }
        let new = NewRoom {
            alias_localpart: alias_localpart.to_string(),
            name: creation.name.clone(),
            topic: creation.topic.clone(),
            join_rule: match creation.join_rule {
                JoinRule::Invite => "invite",
                JoinRule::Public => "public",
                JoinRule::Knock => "knock",
            }
            .to_string(),
            encrypted: creation.encrypted,
            space: *space,
        };
        let (room_id, created) = match self.homeserver.create_room(&new).await {
            Ok(id) => (id, true),
            // Taken meanwhile (or our own creation whose answer was lost): use that room.
            Err(HomeserverError::Status {
                errcode: Some(code),
                ..
            }) if code == "M_ROOM_IN_USE" => (self.room_id(room).await?, false),
            Err(e) => return Err(e.into()),
        };
        let record = RoomRecord {
            key: room.clone(),
            room_id: room_id.clone(),
            created,
            space: *space,
            rule: rule.clone(),
            mode: *mode,
            parent: None,
            at: self.clock.now(),
        };
        let name = if created { action.name() } else { "adopt_room" };
        self.ledger
            .record_room(&record, &self.audit(room, None, name, reason, "ok"))?;
        tracing::info!(%room, %room_id, action = name, %reason, "applied");
        Ok(())
    }

    async fn link(
        &self,
        room: &str,
        parent: &str,
        server_name: &str,
        action: &RoomAction,
    ) -> Result<(), Step> {
        let child_id = self.room_id(room).await?;
        let parent_id = self.room_id(parent).await?;
        self.homeserver
            .link_space(&parent_id, &child_id, server_name)
            .await?;
        if let Some(mut record) = self.ledger.room(room)? {
            record.parent = Some(parent.to_string());
            let entry = self.audit(room, None, action.name(), action.reason(), "ok");
            self.ledger.record_room(&record, &entry)?;
        }
        Ok(())
    }

    /// Every power change of one room in one read-merge-write.
    async fn power(&self, room: &str, actions: &[&RoomAction]) -> Result<(), Step> {
        let room_id = self.room_id(room).await?;
        let changes: BTreeMap<String, Option<i64>> = actions
            .iter()
            .filter_map(|a| match a {
                RoomAction::SetPower { mxid, to, .. } => Some((mxid.clone(), *to)),
                _ => None,
            })
            .collect();
        self.homeserver.set_power(&room_id, &changes).await?;
        super::crash::after_homeserver_write();
        for a in actions {
            let RoomAction::SetPower {
                id,
                mxid,
                to,
                reason,
                ..
            } = a
            else {
                continue;
            };
            let entry = self.audit(mxid, Some(id), a.name(), reason, "ok");
            match to {
                Some(level) => {
                    let record = PowerRecord {
                        room: room.to_string(),
                        id: id.clone(),
                        mxid: mxid.clone(),
                        level: *level,
                        reason: reason.clone(),
                        at: self.clock.now(),
                    };
                    self.ledger.record_power(&record, &entry)?;
                }
                None => self.ledger.remove_power(room, id, &entry)?,
            }
            journal_done(self.ledger, a)?;
        }
        Ok(())
    }

    /// A join or a removal, then its ledger record (the membership added or forgotten).
    async fn member(&self, action: &RoomAction) -> Result<(), Step> {
        let (room, id, mxid, reason) = match action {
            RoomAction::Join {
                room,
                id,
                mxid,
                reason,
            } => (room, Some(id), mxid, reason),
            RoomAction::Kick {
                room,
                id,
                mxid,
                reason,
            } => (room, id.as_ref(), mxid, reason),
            _ => return Ok(()),
        };
        let room_id = self.room_id(room).await?;
        let joining = matches!(action, RoomAction::Join { .. });
        if joining {
            self.homeserver.join(&room_id, mxid).await?;
        } else {
            self.homeserver.kick(&room_id, mxid, reason).await?;
        }
        super::crash::after_homeserver_write();
        let entry = self.audit(mxid, id, action.name(), reason, "ok");
        match (joining, id) {
            (true, Some(id)) => {
                let record = MembershipRecord {
                    room: room.clone(),
                    id: id.clone(),
                    mxid: mxid.clone(),
                    reason: reason.clone(),
                    at: self.clock.now(),
                };
                self.ledger.record_membership(&record, &entry)?;
            }
            (false, Some(id)) => self.ledger.remove_membership(room, id, &entry)?,
            (_, None) => self.ledger.record_audit(&entry)?,
        }
        journal_done(self.ledger, action)?;
        tracing::debug!(%room, %mxid, action = action.name(), %reason, "applied");
        Ok(())
    }
}
