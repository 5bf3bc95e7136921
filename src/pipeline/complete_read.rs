//! A complete read of the directory, each agent mapped on another thread as the read hands it
//! on: the mapping runs beside the read (which waits on the server much of the time) instead
//! of slowing it.

use std::panic::resume_unwind;
use std::sync::mpsc::Receiver;

use super::{agent_query, Mapped, Read, RunError};
use crate::config::Config;
use crate::directory::{self, Entry, Snapshot};
use crate::mapping::{self, Desired, Rules};

/// What the directory read hands the mapping thread.
enum ToMapper {
    /// Entries in the order read (a few hundred at a time: one message each would cost more
    /// than the mapping saves).
    Entries(Vec<Entry>),
    /// The read is complete: what else it gathered (groups, skipped entries).
    Read(Box<Snapshot>),
}

/// Reads every agent and maps them (see the module's doc).
pub(super) async fn read_and_map(
    config: &Config,
    rules: &Rules,
    now: i64,
) -> Result<Mapped, RunError> {
    let (to_mapper, inbox) = std::sync::mpsc::channel();
    let mapping = {
        let rules = rules.clone();
        tokio::task::spawn_blocking(move || map_as_read(&rules, now, inbox))
    };
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    // A send is refused only if the mapping thread panicked, which the join below reports.
    let read = directory::read_snapshot_with(
        &config.directory,
        &agent_query(rules),
        &rules.rooms.sources(),
        &mut |entry| {
            batch.push(entry);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let _ = to_mapper.send(ToMapper::Entries(full));
            }
            None
        },
    )
    .await;
    // On an error the channel closes (the thread ends with nothing) and the error is returned.
    let snapshot = read?;
    let _ = to_mapper.send(ToMapper::Entries(batch));
    let _ = to_mapper.send(ToMapper::Read(Box::new(snapshot)));
    drop(to_mapper);
    let Some((desired, snapshot)) = mapping
        .await
        .unwrap_or_else(|e| resume_unwind(e.into_panic()))
    else {
        unreachable!("the mapping thread was handed the snapshot")
    };
    Ok(Mapped {
        agents: snapshot.agents(),
        server: snapshot.server,
        desired,
        read: Read::Complete {
            watermark: snapshot.watermark,
            sync_ids: snapshot.sync_ids,
            fallback: None,
        },
    })
}

/// The mapping thread: maps each entry as the read hands it on, keeps those the room rules
/// read again, and finishes with the snapshot. `None`: the read failed.
fn map_as_read(rules: &Rules, now: i64, inbox: Receiver<ToMapper>) -> Option<(Desired, Snapshot)> {
    let mut mapper = mapping::Mapper::new(rules, now);
    let mut kept = Vec::new();
    for message in inbox {
        match message {
            ToMapper::Entries(entries) => {
                for entry in entries {
                    if mapper.add(&entry) {
                        kept.push(entry);
                    }
                }
            }
            ToMapper::Read(mut snapshot) => {
                snapshot.passed_on -= kept.len();
                snapshot.entries = kept;
                let desired = mapper.finish(&snapshot);
                return Some((desired, *snapshot));
            }
        }
    }
    None
}
