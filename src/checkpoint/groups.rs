//! Commit groups, and the one "buffer per group, flush when it is complete"
//! helper that every participant of the cut uses.
//!
//! Epochs are grouped into *commit groups* of `commit_interval_ms` by a rule
//! that every worker computes alike ([`CommitGroups`]); a group is labelled by
//! its last epoch. An operator that contributes to a cut (a sink staging
//! files, a stateful operator writing its state) buffers per group and holds
//! a capability for each group it has something for; once its input frontier
//! has passed the group's last epoch, nothing more of the group can arrive,
//! and [`GroupBuffer::complete`] hands the group over. Until then the held
//! capability keeps the committer from considering the group complete.

use crate::time::{Time, epoch_complete};
use std::collections::BTreeMap;
use timely::dataflow::operators::{CapabilitySet, InputCapability};

/// Which epochs end a commit group. Every worker and the committer use the
/// same rule, so all participants of a job are cut at the same epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitGroups {
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// Commit interval, ms (>= `epoch_ms`).
    pub commit_interval_ms: u64,
}

impl CommitGroups {
    /// The last epoch of the group that `epoch` belongs to: the group's label.
    pub fn group_of(&self, epoch: u64) -> u64 {
        let window = epoch.saturating_mul(self.epoch_ms) / self.commit_interval_ms;
        let next_window_ms = (window + 1).saturating_mul(self.commit_interval_ms);
        next_window_ms.div_ceil(self.epoch_ms).saturating_sub(1).max(epoch)
    }
}

/// One buffer `B` per commit group, each with the capabilities that keep
/// the group open; see the module docs.
pub struct GroupBuffer<B> {
    groups: CommitGroups,
    pending: BTreeMap<u64, (CapabilitySet<Time>, B)>,
}

impl<B: Default> GroupBuffer<B> {
    /// An empty buffer under the job's group rule.
    pub fn new(groups: CommitGroups) -> Self {
        GroupBuffer {
            groups,
            pending: BTreeMap::new(),
        }
    }

    /// The buffer of the group that `time` belongs to, which now also holds
    /// a capability for output `port` at `time` (delayed from `cap`).
    pub fn at(&mut self, cap: &InputCapability<Time>, time: Time, port: usize) -> &mut B {
        let (caps, buffer) = self
            .pending
            .entry(self.groups.group_of(time.epoch))
            .or_insert_with(|| (CapabilitySet::new(), B::default()));
        caps.insert(cap.delayed(&time, port));
        buffer
    }

    /// Removes the groups that `frontier` has passed, oldest first, with their
    /// capabilities; the caller hands each over and drops the capabilities
    /// when done.
    pub fn complete<'a>(
        &mut self,
        frontier: impl IntoIterator<Item = &'a Time> + Clone,
    ) -> Vec<(u64, CapabilitySet<Time>, B)> {
        let mut done = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if !epoch_complete(frontier.clone(), *entry.key()) {
                break;
            }
            let (group, (caps, buffer)) = entry.remove_entry();
            done.push((group, caps, buffer));
        }
        done
    }

    /// Puts a group back, e.g. after its write failed; it is handed over again
    /// at the next [`GroupBuffer::complete`].
    pub fn put_back(&mut self, group: u64, caps: CapabilitySet<Time>, buffer: B) {
        self.pending.insert(group, (caps, buffer));
    }

    /// The job's group rule.
    pub fn groups(&self) -> CommitGroups {
        self.groups
    }

    /// Groups still open.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no group is open.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_end_on_commit_interval_boundaries() {
        let g = CommitGroups {
            epoch_ms: 200,
            commit_interval_ms: 1000,
        };
        assert_eq!(
            (0..10).map(|e| g.group_of(e)).collect::<Vec<_>>(),
            vec![4, 4, 4, 4, 4, 9, 9, 9, 9, 9]
        );
        let g = CommitGroups {
            epoch_ms: 300,
            commit_interval_ms: 1000,
        };
        for e in 0..1000 {
            let label = g.group_of(e);
            assert!(label >= e);
            assert_eq!(g.group_of(label), label, "a label is its own group's end");
        }
        let g = CommitGroups {
            epoch_ms: 100,
            commit_interval_ms: 100,
        };
        assert_eq!(g.group_of(8_800_000_000), 8_800_000_000);
    }
}
