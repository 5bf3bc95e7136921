//! `explain <who>`: everything the daemon knows and would do about one person, and why.

use std::fmt::Write;
use std::process::ExitCode;

use super::{open_existing, read_state};
use crate::clock::format_time;
use crate::config::Config;
use crate::directory::{DnKey, StableId};
use crate::homeserver::SynapseClient;
use crate::ledger::{AccountRecord, AccountStatus, AuditEntry, Held};
use crate::mapping::{AgentState, DesiredAccount, LoginPath, LoginRules, Rules};
use crate::pipeline::{self, Preview, RunError, State};

/// Audit entries shown per person.
const RECENT_HISTORY: usize = 5;

pub async fn run(config: &Config, who: &str, now: i64) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    let state = read_state(config)?;
    let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
    // With the homeserver, the plan sees the accounts new agents' mxids collide with.
    let preview = match pipeline::preview_with(config, &rules, &state, now, Some(&homeserver)).await
    {
        Ok(preview) => preview,
        Err(RunError::Homeserver(e)) => {
            eprintln!("note: the homeserver did not answer ({e}); existing accounts and rooms are not checked");
            pipeline::preview(config, &rules, &state, now)
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let ids = matching_ids(who, &preview, &state);
    let is_dn = dn_matcher(who);
    let skipped: Vec<_> = preview
        .desired
        .skipped
        .iter()
        .filter(|s| is_dn(&s.dn))
        .collect();
    if ids.is_empty() && skipped.is_empty() {
        println!(
            "Nobody matches `{who}` in the directory ({}) or the ledger.",
            preview.server
        );
        println!(
            "Try an mxid (@name:{}), a localpart, a login, a DN or an e-mail.",
            config.homeserver.server_name
        );
        return Ok(ExitCode::FAILURE);
    }
    for s in skipped {
        println!(
            "{}\n  Directory: present, but skipped: {}\n  Nothing is done for this entry.\n",
            s.dn, s.reason
        );
    }
    let history = match ids.is_empty() {
        true => Vec::new(),
        false => open_existing(config)?
            .audit_trail(None)
            .map_err(|e| e.to_string())?,
    };
    for id in ids {
        println!(
            "{}",
            describe(config, &rules.login, id, &preview, &state, &history)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a DN is the one `who` names, compared as RFC 4514 says (`who` may be written
/// with other case, spacing or escapes than the directory's).
fn dn_matcher(who: &str) -> impl Fn(&str) -> bool + '_ {
    let key = who.contains('=').then(|| DnKey::parse(who).ok()).flatten();
    move |dn: &str| {
        dn.eq_ignore_ascii_case(who) || key.as_ref().is_some_and(|k| *k == DnKey::lenient(dn))
    }
}

/// Agents (in the directory or the ledger) that `who` names: mxid, localpart, DN, login or
/// e-mail, any case.
fn matching_ids<'a>(who: &str, preview: &'a Preview, state: &'a State) -> Vec<&'a StableId> {
    let is = |text: &str| text.eq_ignore_ascii_case(who);
    let is_dn = dn_matcher(who);
    let record_matches = |r: &AccountRecord| is(&r.mxid) || is(&r.localpart) || is_dn(&r.dn);
    let wanted_matches = |w: &DesiredAccount| {
        is(&w.localpart)
            || is_dn(&w.dn)
            || w.login.as_deref().is_some_and(is)
            || w.emails.iter().any(|e| is(e))
    };
    let mut ids: Vec<&StableId> = Vec::new();
    for want in &preview.desired.accounts {
        if wanted_matches(want)
            || state
                .view
                .accounts
                .get(&want.id)
                .is_some_and(record_matches)
        {
            ids.push(&want.id);
        }
    }
    for record in state.view.accounts.values() {
        if !ids.contains(&&record.id) && record_matches(record) {
            ids.push(&record.id);
        }
    }
    ids
}

/// Where the agent's login lands (`ldap3`), or the external ids their account should hold
/// (`sso`); `mxid`: their account, if they have one.
fn login_line(
    login: &LoginRules,
    want: &DesiredAccount,
    mxid: Option<&str>,
    server_name: &str,
) -> Option<String> {
    match &login.path {
        LoginPath::Ldap3 { attribute } => {
            let Some(typed) = want.login.as_deref() else {
                return Some(format!(
                    "login: no `{attribute}`: cannot log in through synapse-ldap3"
                ));
            };
            Some(match login.login_localpart(want) {
                None => format!(
                    "login: `{typed}` is not a legal localpart once lowercased: synapse-ldap3 cannot log this agent in"
                ),
                Some(localpart) => {
                    let lands = format!("@{localpart}:{server_name}");
                    let whose = match mxid {
                        Some(m) if m == lands => "this account",
                        Some(_) => "NOT this account",
                        None => "the account a sync would create",
                    };
                    format!("login: `{typed}` (synapse-ldap3) lands on {lands}: {whose}")
                }
            })
        }
        LoginPath::Sso { provider, .. } => Some(match want.external_ids.as_slice() {
            [] => format!(
                "SSO ({provider}): no external id: the first SSO login will not find the account"
            ),
            ids => format!(
                "SSO: {}",
                ids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        LoginPath::Undeclared | LoginPath::None => None,
    }
}

fn describe(
    config: &Config,
    login: &LoginRules,
    id: &StableId,
    preview: &Preview,
    state: &State,
    history: &[AuditEntry],
) -> String {
    let want = preview.desired.accounts.iter().find(|w| &w.id == id);
    let record = state.view.accounts.get(id);
    let mxid = record.map(|r| r.mxid.as_str());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  (stable id {id})",
        mxid.unwrap_or("(no account yet)")
    );
    match want {
        None => {
            let _ = writeln!(
                out,
                "  Directory: not found under {} with the agent filter",
                config.directory.base_dns.join("; ")
            );
        }
        Some(w) => {
            let _ = writeln!(out, "  Directory: {}", w.dn);
            let _ = writeln!(
                out,
                "    wants \"{}\" <{}>",
                w.display_name,
                w.emails.join(">, <")
            );
            let _ = writeln!(out, "    state: {}", agent_state(&w.state));
            if let Some(line) = login_line(login, w, mxid, &config.homeserver.server_name) {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    match record {
        None => {
            let _ = writeln!(out, "  Ledger: not managed yet");
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "  Ledger: {:?} on {}, {}",
                r.origin,
                format_time(r.created_at),
                account_status(&r.status)
            );
            let _ = writeln!(
                out,
                "    applied \"{}\" <{}>",
                r.display_name,
                r.emails.join(">, <")
            );
        }
    }
    planned(&mut out, id, mxid, preview);
    if let Some(held) = state.view.held.get(id) {
        let _ = writeln!(
            out,
            "  Held since {}: {}",
            format_time(held.since),
            match &held.why {
                Held::Conflict { reason } => format!("conflict with {}: {reason}", held.mxid),
                Held::Refused { action, error, .. } =>
                    format!("{action} {} refused by the homeserver: {error}", held.mxid),
            }
        );
    }
    let mine: Vec<_> = history
        .iter()
        .filter(|e| &e.id == id || Some(e.mxid.as_str()) == mxid)
        .collect();
    for e in mine.iter().skip(mine.len().saturating_sub(RECENT_HISTORY)) {
        let _ = writeln!(
            out,
            "  History: {} {} {}: {}",
            format_time(e.at),
            e.action,
            e.result,
            e.reason
        );
    }
    out
}

/// What the plan holds for this person: account actions, room actions, deadlines, protection.
fn planned(out: &mut String, id: &StableId, mxid: Option<&str>, preview: &Preview) {
    let plan = &preview.plan;
    let held = |departure: bool| match &preview.brake {
        Some(why) if departure || why.holds_everything() => " [held back by the brake]",
        _ => "",
    };
    let mut any = false;
    for a in plan.actions.iter().filter(|a| a.id() == id) {
        any = true;
        let _ = writeln!(
            out,
            "  Plan: {} {}{}\n    why: {}",
            a.kind().name(),
            a.mxid(),
            held(a.kind().is_departure()),
            a.reason()
        );
    }
    for a in plan
        .rooms
        .actions
        .iter()
        .filter(|a| mxid.is_some() && a.mxid() == mxid)
    {
        any = true;
        let _ = writeln!(
            out,
            "  Plan: {} {}{}\n    why: {}",
            a.name(),
            a.room(),
            held(a.is_destructive()),
            a.reason()
        );
    }
    for c in plan.conflicts.iter().filter(|c| &c.id == id) {
        any = true;
        let _ = writeln!(
            out,
            "  Plan: conflict, no account for now: {}\n    why: {}",
            c.mxid, c.reason
        );
    }
    for s in plan.skipped.iter().filter(|s| s.id.as_ref() == Some(id)) {
        any = true;
        let _ = writeln!(out, "  Plan: skipped: {}", s.reason);
    }
    for s in plan.shadows.iter().filter(|s| &s.id == id) {
        any = true;
        let _ = writeln!(
            out,
            "  Shadow account: {} (not managed; matched by {}){}",
            s.mxid,
            s.matched,
            match (s.departed, s.locked) {
                (_, true) => " — locked",
                (true, false) => " — SECURITY: the agent left and can still use it",
                (false, false) => "",
            }
        );
    }
    for r in plan.refused.iter().filter(|r| &r.id == id) {
        any = true;
        let _ = writeln!(
            out,
            "  Plan: {} {} left out: refused by the homeserver since {}: {}; tried again from {} or when the agent changes",
            r.action,
            r.mxid,
            format_time(r.since),
            r.error,
            format_time(r.retry_at)
        );
    }
    for p in plan
        .pending
        .iter()
        .filter(|p| Some(p.mxid.as_str()) == mxid)
    {
        any = true;
        let _ = writeln!(out, "  Waiting: {} on {}", p.what, format_time(p.at));
    }
    for p in plan
        .protected
        .iter()
        .filter(|p| Some(p.mxid.as_str()) == mxid)
    {
        any = true;
        let _ = writeln!(out, "  Protected: would act on: {}", p.reason);
    }
    if !any {
        let _ = writeln!(out, "  Plan: nothing to do");
    }
}

fn agent_state(state: &AgentState) -> String {
    match state {
        AgentState::Active => "active".to_string(),
        AgentState::Scheduled { at, reason } => format!(
            "active; scheduled departure on {} ({reason})",
            format_time(*at)
        ),
        AgentState::Departed { reason, .. } => format!("departed: {reason}"),
    }
}

fn account_status(status: &AccountStatus) -> String {
    match status {
        AccountStatus::Active => "active".to_string(),
        AccountStatus::Departing {
            since,
            reason,
            step,
        } => {
            format!("{} since {} ({reason})", step.done(), format_time(*since))
        }
        AccountStatus::Deactivated { at, reason } => {
            format!("deactivated on {} ({reason})", format_time(*at))
        }
    }
}
