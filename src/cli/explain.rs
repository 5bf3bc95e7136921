//! `explain <who>`: everything the daemon knows and would do about one person, and why.

use std::fmt::Write;
use std::process::ExitCode;

use super::{open_existing, read_state};
use crate::clock::format_time;
use crate::config::Config;
use crate::directory::StableId;
use crate::ledger::{AccountRecord, AccountStatus};
use crate::mapping::{AgentState, DesiredAccount, Rules};
use crate::pipeline;

pub async fn run(config: &Config, who: &str, now: i64) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    let state = read_state(config)?;
    let preview = pipeline::preview(config, &rules, &state, now)
        .await
        .map_err(|e| e.to_string())?;
    let matches = |record: Option<&AccountRecord>, want: Option<&DesiredAccount>| {
        let mxid = record.map(|r| r.mxid.as_str());
        let localpart = record
            .map(|r| r.localpart.as_str())
            .or(want.map(|w| w.localpart.as_str()));
        let dns = [record.map(|r| r.dn.as_str()), want.map(|w| w.dn.as_str())];
        mxid.is_some_and(|m| m.eq_ignore_ascii_case(who))
            || localpart.is_some_and(|l| l.eq_ignore_ascii_case(who))
            || dns.iter().flatten().any(|dn| dn.eq_ignore_ascii_case(who))
            || want.is_some_and(|w| {
                w.login
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(who))
                    || w.emails.iter().any(|e| e.eq_ignore_ascii_case(who))
            })
    };
    let mut ids: Vec<&StableId> = Vec::new();
    for want in &preview.desired.accounts {
        if matches(state.view.accounts.get(&want.id), Some(want)) {
            ids.push(&want.id);
        }
    }
    for record in state.view.accounts.values() {
        if !ids.contains(&&record.id) && matches(Some(record), None) {
            ids.push(&record.id);
        }
    }
    let skipped: Vec<_> = preview
        .desired
        .skipped
        .iter()
        .filter(|s| s.dn.eq_ignore_ascii_case(who))
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
    let history = if ids.is_empty() {
        Vec::new()
    } else {
        open_existing(config)?
            .audit_trail(None)
            .map_err(|e| e.to_string())?
    };
    for id in ids {
        let want = preview.desired.accounts.iter().find(|w| &w.id == id);
        let record = state.view.accounts.get(id);
        let mut out = String::new();
        let title = record
            .map(|r| r.mxid.clone())
            .unwrap_or_else(|| "(no account yet)".into());
        let _ = writeln!(out, "{title}  (stable id {id})");
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
                let state = match &w.state {
                    AgentState::Active => "active".to_string(),
                    AgentState::Scheduled { at, reason } => format!(
                        "active; scheduled departure on {} ({reason})",
                        format_time(*at)
                    ),
                    AgentState::Departed { reason, .. } => format!("departed: {reason}"),
                };
                let _ = writeln!(out, "    state: {state}");
            }
        }
        match record {
            None => {
                let _ = writeln!(out, "  Ledger: not managed yet");
            }
            Some(r) => {
                let status = match &r.status {
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
                };
                let _ = writeln!(
                    out,
                    "  Ledger: {:?} on {}, {status}",
                    r.origin,
                    format_time(r.created_at)
                );
                let _ = writeln!(
                    out,
                    "    applied \"{}\" <{}>",
                    r.display_name,
                    r.emails.join(">, <")
                );
            }
        }
        let mxid = record.map(|r| r.mxid.as_str());
        let actions: Vec<_> = preview
            .plan
            .actions
            .iter()
            .filter(|a| a.id() == id)
            .collect();
        let pending: Vec<_> = preview
            .plan
            .pending
            .iter()
            .filter(|p| Some(p.mxid.as_str()) == mxid)
            .collect();
        if actions.is_empty() && pending.is_empty() {
            let _ = writeln!(out, "  Plan: nothing to do");
        }
        for a in actions {
            let held = if a.kind().is_departure() && preview.brake.is_some() {
                " [held back by the brake]"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  Plan: {} {}{held}\n    why: {}",
                a.kind().name(),
                a.mxid(),
                a.reason()
            );
        }
        for p in pending {
            let _ = writeln!(out, "  Waiting: {} on {}", p.what, format_time(p.at));
        }
        for p in preview
            .plan
            .protected
            .iter()
            .filter(|p| Some(p.mxid.as_str()) == mxid)
        {
            let _ = writeln!(out, "  Protected: would act on: {}", p.reason);
        }
        let mine: Vec<_> = history
            .iter()
            .filter(|e| &e.id == id || Some(e.mxid.as_str()) == mxid)
            .collect();
        for e in mine.iter().skip(mine.len().saturating_sub(5)) {
            let _ = writeln!(
                out,
                "  History: {} {} {}: {}",
                format_time(e.at),
                e.action,
                e.result,
                e.reason
            );
        }
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
