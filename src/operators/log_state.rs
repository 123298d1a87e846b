//! Logging a stream's records as operator-state deltas, for operators whose
//! state is "the records seen and not yet expired" (the interval join).
//!
//! The records of each commit group are written to a delta file (on a thread
//! of its own) when the frontier passes the group, together with their timestamps, and reported
//! to the committer; a delta stays live until all its records have expired
//! in event time (`event + ttl`). Restoring an operator is then re-inserting
//! the records of the live deltas: see [`read_logged`].

use crate::checkpoint::state::{BackgroundWrite, StateCheckpoint, StateFile, StateKind};
use crate::time::{Time, epoch_complete, stamp_time};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::operators::generic::Operator;

/// A commit group's records: capabilities, records with times, max expiry.
type Pending<D> = (CapabilitySet<Time>, Vec<(Time, D)>, u64);

/// Writes the records of a stream as state deltas.
pub trait LogState<'scope, D> {
    /// Logs every record with its time under `ckpt.operator`; a record expires
    /// at `expiry(record)` (event µs).
    fn log_state<F>(self, ckpt: StateCheckpoint, expiry: F) -> Stream<'scope, Time, Vec<StateFile>>
    where
        F: Fn(&D) -> u64 + 'static;
}

impl<'scope, D> LogState<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: Serialize + timely::ExchangeData,
{
    fn log_state<F>(self, ckpt: StateCheckpoint, expiry: F) -> Stream<'scope, Time, Vec<StateFile>>
    where
        F: Fn(&D) -> u64 + 'static,
    {
        let scope = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        self.unary_frontier(Pipeline, &format!("LogState({})", ckpt.operator), move |_cap, info| {
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let mut pending: BTreeMap<u64, Pending<D>> = BTreeMap::new();
            let mut writing: Vec<(CapabilitySet<Time>, BackgroundWrite)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = stamp_time(cap.stamp().iter()) else {
                        return;
                    };
                    let entry = pending
                        .entry(ckpt.groups.group_of(time.epoch))
                        .or_insert_with(|| (CapabilitySet::new(), Vec::new(), 0));
                    entry.0.insert(cap.delayed(&time, 0));
                    for batch in data {
                        for d in batch.iter() {
                            entry.2 = entry.2.max(expiry(d));
                        }
                        entry.1.extend(batch.drain(..).map(|d| (time, d)));
                    }
                });
                // Groups the frontier has passed are written off the worker
                // thread, and reported once durable.
                while let Some(entry) = pending.first_entry() {
                    if !epoch_complete(frontier.frontier().iter(), *entry.key()) {
                        break;
                    }
                    let (group, (caps, records, max_expiry)) = entry.remove_entry();
                    let file = ckpt.file(index, peers, group, StateKind::Delta, max_expiry);
                    let write = ckpt.store.write_in_background(file, records, wake.clone());
                    writing.push((caps, write));
                }
                writing.retain(|(caps, write)| match write.done() {
                    Some(file) => {
                        output.session(caps).give(file);
                        false
                    }
                    None => true,
                });
            }
        })
    }
}

/// Reads every live record logged under `ckpt.operator` in the restored checkpoint.
pub fn read_logged<D: DeserializeOwned>(ckpt: &StateCheckpoint) -> crate::error::Result<Vec<(Time, D)>> {
    let mut out = Vec::new();
    for file in ckpt.restore.iter().filter(|f| f.operator == ckpt.operator) {
        out.extend(ckpt.store.read::<(Time, D)>(file)?);
    }
    Ok(out)
}
