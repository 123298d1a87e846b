//! Ending a run: the one stop signal that signal handlers, the demo and
//! fatal errors use, and what the end of a run means for event time.
//!
//! A run never ends the input: a Kafka topic goes on, and the next run reads
//! on from where this one got, whether it was stopped or read a bounded
//! input to its end. So the end of a run must leave to the next one every
//! event-time decision that needs messages not read yet.
//!
//! * At its end, each source worker reports where it got and moves its
//!   capabilities to `(STOPPED, its watermark)` (see [`crate::time::STOPPED`]):
//!   every real epoch can then be committed, in the final cut, while event
//!   time stays where the sources justify it. A partition read to the end of
//!   a bounded input still holds its watermark: it has more to come.
//! * Event-time operators see a frontier whose elements are all at
//!   `STOPPED`: they act one last time below its event part (every source
//!   holds its watermark there), then let go of what waits, which their
//!   checkpointed state holds, and act on nothing more in this run
//!   ([`crate::time::event_progress`]).
//! * A source drops its capabilities only once the frontier of everything
//!   the committer receives is at `STOPPED`: the final cut is taken, and no
//!   operator holds a real epoch any more. Only then may the frontier jump
//!   (to the watermarks of the sources that drop last, then to "finished"),
//!   and no operator acts on it: every operator that holds anything has seen
//!   the `STOPPED` frontier first (its capabilities held the cut), and acts
//!   only on the first one. This needs no flag shared between processes: the
//!   timestamps carry it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Asks running sources to stop: now, or once they reach given offsets; and
/// carries the reason when the job must end with an error.
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    now: AtomicBool,
    drain: Mutex<Option<BTreeMap<(u16, i32), i64>>>,
    drain_set: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl StopSignal {
    /// Stop at the current position, closing the current epoch.
    pub fn stop_now(&self) {
        self.0.now.store(true, Ordering::SeqCst);
    }
    /// Stop at the current position (committing what was read), and end the
    /// run with `reason` as its error. The first reason wins.
    pub fn fail(&self, reason: String) {
        let mut failure = self.0.failure.lock().expect("failure lock");
        if failure.is_none() {
            tracing::error!(reason, "stopping the job");
            *failure = Some(reason);
        }
        drop(failure);
        self.stop_now();
    }
    /// The reason given to [`StopSignal::fail`], if any.
    pub fn failure(&self) -> Option<String> {
        self.0.failure.lock().expect("failure lock").clone()
    }
    /// Stop each partition once it reaches the given next offset.
    pub fn drain_to(&self, ends: BTreeMap<(u16, i32), i64>) {
        *self.0.drain.lock().expect("drain lock") = Some(ends);
        self.0.drain_set.store(true, Ordering::SeqCst);
    }
    /// Whether [`StopSignal::stop_now`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.now.load(Ordering::SeqCst)
    }
    pub(crate) fn drain_targets(&self) -> Option<BTreeMap<(u16, i32), i64>> {
        if self.0.drain_set.load(Ordering::Relaxed) {
            self.0.drain.lock().expect("drain lock").clone()
        } else {
            None
        }
    }
}
