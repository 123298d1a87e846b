//! Logging a stream's records as operator-state deltas, for operators whose
//! state is "the records seen and not yet expired" (the interval join).
//!
//! The records of each commit group are written to a delta file (on a thread
//! of its own) when the frontier passes the group, together with their
//! timestamps, and reported to the cut; a delta stays live until all its
//! records have expired in event time (`expiry`, µs). Restoring an operator
//! is then re-inserting the records of the live deltas: see [`read_logged`].

use crate::checkpoint::state::{StateCheckpoint, StateKind, StateWrites};
use crate::checkpoint::{Checkpointed, GroupBuffer};
use crate::time::{Time, stamp_time};
use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// A commit group's records with their times, and their largest expiry.
type Pending<D> = (Vec<(Time, D)>, u64);

/// Writes the records of a stream as state deltas.
pub trait LogState<'scope, D> {
    /// Logs every record with its time as the state of `ckpt`'s operator,
    /// registered with the cut; a record expires at `expiry(record)` (µs).
    fn log_state<F>(self, ckpt: Checkpointed<'scope>, expiry: F)
    where
        F: Fn(&D) -> u64 + 'static;
}

impl<'scope, D> LogState<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: Serialize + timely::ExchangeData,
{
    fn log_state<F>(self, ckpt: Checkpointed<'scope>, expiry: F)
    where
        F: Fn(&D) -> u64 + 'static,
    {
        let scope = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let state = ckpt.state;
        let name = format!("LogState({})", state.operator);
        let files = self.unary_frontier(Pipeline, &name, move |_cap, info| {
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let mut pending: GroupBuffer<Pending<D>> = GroupBuffer::new(state.groups);
            let mut writing = StateWrites::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(time) = stamp_time(cap.stamp().iter()) else {
                        return;
                    };
                    let (records, max_expiry) = pending.at(&cap, time, 0);
                    for d in data.drain(..) {
                        *max_expiry = (*max_expiry).max(expiry(&d));
                        records.push((time, d));
                    }
                });
                // Groups the frontier has passed are written off the worker
                // thread, and reported once durable.
                for (group, caps, (records, max_expiry)) in pending.complete(frontier.frontier().iter()) {
                    let file = state.file(index, peers, group, StateKind::Delta, max_expiry);
                    writing.push(caps, state.store.write_in_background(file, records, wake.clone()));
                }
                writing.report(|caps, file| output.session(caps).give(file));
            }
        });
        ckpt.cut.register_state(files);
    }
}

/// Reads every live record logged under `ckpt.operator` in the restored checkpoint.
pub fn read_logged<D: DeserializeOwned>(ckpt: &StateCheckpoint) -> crate::error::Result<Vec<(Time, D)>> {
    let mut out = Vec::new();
    for file in ckpt.restored() {
        out.extend(ckpt.store.read::<(Time, D)>(file)?);
    }
    Ok(out)
}
