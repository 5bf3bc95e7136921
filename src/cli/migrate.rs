//! `migrate-ids`: shows how the ledger's accounts match the agents under a new id attribute
//! (a dry run), and with `--apply` re-keys the ledger (see [`crate::migrate`]).

use std::fmt::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::clock::Clock;
use crate::config::Config;
use crate::directory::IdFormat;
use crate::ledger::Rekeyed;
use crate::mapping::Rules;
use crate::migrate::{self, by_text, matcher::By, Migration, OldIds};

/// What the command line asked for.
pub struct Options {
    pub from_attribute: Option<String>,
    pub from_format: Option<IdFormat>,
    pub apply: bool,
    pub allow_unmatched: bool,
    pub json: bool,
}

pub async fn run(config: &Config, clock: &dyn Clock, options: Options) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    let ledger = super::open_existing(config)?;
    let last = ledger.last_good().map_err(|e| e.to_string())?;
    let from = OldIds::choose(
        options.from_attribute.as_deref(),
        options.from_format,
        last.as_ref(),
    )?;
    let now = clock.now();
    let migration = migrate::prepare(config, &rules, &ledger, from, now)
        .await
        .map_err(|e| e.to_string())?;
    let refusal = migration.refusal(options.allow_unmatched);
    let applied = match (&refusal, options.apply) {
        (Some(why), true) => {
            print_migration(&migration, Done::Refused(why), options.json);
            return Err(format!("nothing re-keyed: {why}"));
        }
        (None, true) => {
            let done = migrate::apply(&ledger, &migration, now).map_err(|e| e.to_string())?;
            tracing::info!(
                accounts = done.accounts,
                memberships = done.memberships,
                from = %migration.from.describe(),
                "ledger re-keyed"
            );
            Some(done)
        }
        (_, false) => None,
    };
    let done = match &applied {
        Some(rekeyed) => Done::Applied(rekeyed),
        None => Done::DryRun(refusal.as_deref()),
    };
    print_migration(&migration, done, options.json);
    Ok(ExitCode::SUCCESS)
}

/// What became of the migration.
#[derive(Clone, Copy)]
enum Done<'a> {
    /// Nothing written; `--apply` would be refused for this reason, if any.
    DryRun(Option<&'a str>),
    /// `--apply` was refused: nothing written.
    Refused(&'a str),
    Applied(&'a Rekeyed),
}

fn print_migration(m: &Migration, done: Done, json: bool) {
    if json {
        println!("{}", migration_json(m, done));
    } else {
        print!("{}", migration_text(m, done));
    }
}

fn migration_text(m: &Migration, done: Done) -> String {
    let old = &m.from.attribute;
    let new = migrate::describe(&m.to.id_attribute, m.to.id_format);
    let mut out = String::new();
    match done {
        Done::DryRun(_) => {
            out.push_str("Dry run: nothing is written (`migrate-ids --apply` writes it).\n")
        }
        Done::Refused(_) => out.push_str("Refused: nothing is written.\n"),
        Done::Applied(_) => {}
    }
    let _ = writeln!(
        out,
        "Ledger keys from {} → agents' ids now from {new}",
        m.from.describe()
    );
    let _ = writeln!(
        out,
        "Directory {}: {} agents; ledger: {} managed accounts\n",
        m.server, m.agents, m.managed
    );
    let matched = &m.matching.matched;
    let _ = writeln!(
        out,
        "Matched ({}): {} by {old}, {} by DN, {} by e-mail, {} already keyed by the new id",
        matched.len(),
        m.count(By::OldId),
        m.count(By::Dn),
        m.count(By::Email),
        m.count(By::SameId)
    );
    for x in matched {
        // The old id and the same id are the key shown already; a DN or an e-mail is not.
        let via = match x.by {
            By::Dn | By::Email => format!(": {}", x.via),
            By::OldId | By::SameId => String::new(),
        };
        let _ = writeln!(
            out,
            "  {}  {} → {}  (by {}{via})",
            x.mxid,
            x.from,
            x.to,
            by_text(x.by, old)
        );
    }
    out.push('\n');
    section(
        &mut out,
        "Ambiguous",
        "none of these is re-keyed",
        &m.matching.ambiguous,
        |a| a.reason.clone(),
    );
    section(
        &mut out,
        "Unmatched accounts",
        "they keep their old ids; a complete `sync` takes them for gone",
        &m.matching.unmatched,
        |u| {
            let state = if u.deactivated { " [deactivated]" } else { "" };
            format!("{}{state}: {}", u.mxid, u.reason)
        },
    );
    section(
        &mut out,
        "New agents",
        "no managed account is theirs: `sync` creates their accounts",
        &m.matching.new_agents,
        |a| format!("{}  {}", a.dn, a.id),
    );
    section(
        &mut out,
        &format!("Entries without a usable {new}"),
        "no account can be theirs",
        &m.without_id,
        |s| format!("{}: {}", s.dn, s.reason),
    );
    let rekeys = m.matching.rekeys().count();
    match done {
        Done::Applied(done) => {
            let _ = writeln!(
                out,
                "Re-keyed {} account(s), {} room membership(s), {} power level(s), {} held agent(s), {} scheduled departure(s), \
                 {} journal intent(s); the new scope is the last good run's. The next `sync` reads everything and plans \
                 against the new ids.",
                done.accounts, done.memberships, done.powers, done.held, done.scheduled, done.intents
            );
        }
        Done::Refused(why) => {
            let _ = writeln!(out, "`--apply` is refused: {why}.");
        }
        Done::DryRun(Some(why)) => {
            let _ = writeln!(out, "`--apply` would be refused: {why}.");
        }
        Done::DryRun(None) => {
            let _ = writeln!(
                out,
                "`--apply` would re-key {rekeys} account(s) and record the new scope as the last good run's."
            );
        }
    }
    out
}

fn section<T>(out: &mut String, title: &str, note: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title} ({}): {note}", items.len());
    for item in items {
        let _ = writeln!(out, "  {}", line(item));
    }
    out.push('\n');
}

fn migration_json(m: &Migration, done: Done) -> String {
    let (applied, refusal) = match done {
        Done::Applied(rekeyed) => (Some(rekeyed), None),
        Done::Refused(why) | Done::DryRun(Some(why)) => (None, Some(why)),
        Done::DryRun(None) => (None, None),
    };
    json!({
        "from": {"attribute": m.from.attribute, "format": m.from.format},
        "to": {"attribute": m.to.id_attribute, "format": m.to.id_format},
        "server": m.server,
        "agents": m.agents,
        "managed": m.managed,
        "counts": {
            "matched": m.matching.matched.len(),
            "rekeyed": m.matching.rekeys().count(),
            "by_old_id": m.count(By::OldId),
            "by_dn": m.count(By::Dn),
            "by_email": m.count(By::Email),
            "same_id": m.count(By::SameId),
            "ambiguous": m.matching.ambiguous.len(),
            "unmatched": m.matching.unmatched.len(),
            "unmatched_active": m.unmatched_active(),
            "new_agents": m.matching.new_agents.len(),
            "without_id": m.without_id.len(),
        },
        "matched": m.matching.matched,
        "ambiguous": m.matching.ambiguous,
        "unmatched": m.matching.unmatched,
        "new_agents": m.matching.new_agents,
        "without_id": m.without_id.iter().map(|s| json!({"dn": s.dn, "reason": s.reason})).collect::<Vec<_>>(),
        "applied": applied,
        "refused": refusal,
    })
    .to_string()
}
