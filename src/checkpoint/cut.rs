//! Registering with the cut: every stateful operator and every sink of a
//! worker's dataflow hands its stream of [`CommitItem`]s to the worker's
//! [`Cut`] as it is built, and the launcher commits all of them together. A
//! dataflow cannot leave one out: operators and sinks register themselves.

use super::participant::CommitItem;
use super::state::{StateCheckpoint, StateFile};
use crate::time::Time;
use std::cell::RefCell;
use std::rc::Rc;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concatenate, Probe};
use timely::dataflow::{Scope, Stream};

/// A stream of items for the cut.
pub type CommitStream<'scope> = Stream<'scope, Time, Vec<CommitItem>>;

/// The streams one worker's dataflow contributes to its cuts.
#[derive(Clone, Default)]
pub struct Cut<'scope> {
    items: Rc<RefCell<Vec<CommitStream<'scope>>>>,
    /// The frontier of all of them together, once [`Cut::all`] is called:
    /// what sources wait for at the end of a run (see [`crate::stop`]).
    release: ProbeHandle<Time>,
}

impl<'scope> Cut<'scope> {
    /// Adds `items` to every cut of the job.
    pub fn register(&self, items: CommitStream<'scope>) {
        self.items.borrow_mut().push(items);
    }

    /// Adds a stream of state files (a stateful operator's).
    pub fn register_state(&self, files: Stream<'scope, Time, Vec<StateFile>>) {
        self.register(files.map(CommitItem::from));
    }

    /// Every stream registered, as one (for the launcher, once the dataflow
    /// is built), with [`Cut::release`] probing it.
    pub fn all(&self, scope: Scope<'scope, Time>) -> CommitStream<'scope> {
        let items = std::mem::take(&mut *self.items.borrow_mut());
        scope.concatenate(items).probe_with(&self.release)
    }

    /// The frontier of everything registered (once [`Cut::all`] is called).
    pub fn release(&self) -> ProbeHandle<Time> {
        self.release.clone()
    }
}

/// What a stateful operator needs to be part of the cut: where and how to
/// write its state, the state to restore, and the cut to register with.
#[derive(Clone)]
pub struct Checkpointed<'scope> {
    /// The operator's state files: name, store, group rule, restore.
    pub state: StateCheckpoint,
    /// The worker's cut.
    pub cut: Cut<'scope>,
    /// The run's first epoch: restored state is held no earlier.
    pub first_epoch: u64,
}
