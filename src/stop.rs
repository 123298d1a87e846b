//! Stopping a job: the one signal that signal handlers, the demo and fatal
//! errors use, and what a stop means for event time.
//!
//! A stop is not the end of the input: the next run reads on from where this
//! one stopped, so a stop must leave every event-time decision to it that
//! needs messages not read yet.
//!
//! * Asked to stop, each source worker reports where it got and moves its
//!   capabilities to `(STOPPED, its watermark)`: every real epoch can then be
//!   committed (the final cut), while event time stays where it was. It drops
//!   them only once every worker's source, in every process, has stopped.
//! * Dropping them still lets the event-time frontier jump, to the watermarks
//!   of the workers that drop last and then to "finished", though the
//!   partitions of the others have messages below it that the next run will
//!   read. So event-time operators (and the committer's record of how far
//!   event time got) trust no frontier they see once [`StopSignal::is_stopped`]:
//!   the barrier above makes the flag visible in every process before any
//!   such jump can be, as long as they read it *after* the frontier.
//!
//! The end of a bounded input is different: its partitions have nothing more
//! to give, and sources drop their capabilities at once.

use crate::time::{Time, event_frontier};
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

/// What an event-time operator may act on, from its input frontier and the
/// job's stop signal: see [`StopSignal::event_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventProgress {
    /// Every on-time record dated below this event time (µs) is in: act on
    /// them (compare, close windows). `u64::MAX`: the input has ended.
    Below(u64),
    /// Stopped: act on nothing more; what waits is the next run's (it is in
    /// the operator's checkpointed state). `drained`: the input frontier is
    /// empty, so let go of it now, capabilities included.
    Stopped {
        /// The input frontier is empty.
        drained: bool,
    },
}

impl StopSignal {
    /// How far an event-time operator may act on `frontier`, its input
    /// frontier: the one place that tells a stop from the end of the input.
    /// Reads the stop flag after the frontier, as the module docs require.
    pub fn event_progress<'a>(&self, frontier: impl IntoIterator<Item = &'a Time>) -> EventProgress {
        let mut frontier = frontier.into_iter().peekable();
        let drained = frontier.peek().is_none();
        let below = event_frontier(frontier);
        if self.is_stopped() {
            EventProgress::Stopped { drained }
        } else {
            EventProgress::Below(below)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_not_the_end_of_the_input() {
        let stop = StopSignal::default();
        let open = [Time::new(3, 700), Time::new(4, 500)];
        assert_eq!(stop.event_progress(&open), EventProgress::Below(500));
        assert_eq!(
            stop.event_progress(&[]),
            EventProgress::Below(u64::MAX),
            "the end: act on all"
        );
        stop.stop_now();
        assert_eq!(stop.event_progress(&open), EventProgress::Stopped { drained: false });
        assert_eq!(stop.event_progress(&[]), EventProgress::Stopped { drained: true });
    }
}
