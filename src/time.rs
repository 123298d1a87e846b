//! The K2 timestamp: a consistency epoch and an event time, partially ordered.
//!
//! Consistency and event time are separate concerns, and one partially ordered
//! timestamp carries both through timely's progress tracking:
//!
//! * [`Time::epoch`] decides *consistency*, the way Flink's checkpoint barriers
//!   do. Sources tick epochs from the wall clock (`epoch = now / period`, the
//!   same rule on every worker), and a sink may commit epoch `e` once no element
//!   of its input frontier has an epoch `<= e` (see [`epoch_complete`]).
//! * [`Time::event`] decides *windows*, the way Flink's watermarks do. It is
//!   the event-time watermark (microseconds since the Unix epoch, the
//!   precision Kraken sends) under which a record was emitted. An operator may forget state for event times `< W` once
//!   every frontier element has an event part `>= W` (see [`event_frontier`]).
//!
//! The order is the product order: `a <= b` iff both parts are `<=`. Frontiers
//! therefore often hold several incomparable elements, and both checks above
//! read all of them.
//!
//! `timely::order::Product` would order the same way, but it cannot be a
//! dataflow's top-level timestamp (it does not refine `()`), and named fields
//! read better than `outer`/`inner`.

use serde::{Deserialize, Serialize};
use std::fmt;
use timely::PartialOrder;
use timely::order::Empty;
use timely::progress::timestamp::{PathSummary, Refines, Timestamp};

/// A dataflow timestamp: `(epoch, event-time watermark in µs)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Time {
    /// The consistency epoch.
    pub epoch: u64,
    /// The event-time watermark, µs since the Unix epoch.
    pub event: u64,
}

/// The epoch of a source's capabilities once its run is over (stopped, or
/// at the end of a bounded input): past every real epoch, so that all of
/// them can be committed, while the event part stays where the source got
/// (see [`crate::stop`]).
pub const STOPPED: u64 = u64::MAX >> 1;

/// What an event-time operator may act on, by its input frontier: see
/// [`event_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventProgress {
    /// Every on-time record dated below this event time (µs) is in: act on
    /// them (compare, close windows).
    Below(u64),
    /// The run is over (stopped, or its bounded input read): act on the
    /// records dated below `below` (µs), which are in, and from then on on
    /// nothing more in this run, whatever later frontiers say: let go of the
    /// capabilities of what waits. What waits is in the operator's
    /// checkpointed state, for the next run. Only the *first* `Ending` an
    /// operator sees is to be acted on (see [`crate::stop`]).
    Ending {
        /// Where every source's watermark stands; 0 for an empty frontier.
        below: u64,
    },
}

/// How far an event-time operator may act on `frontier`, its input
/// frontier. A run never ends the input (a Kafka topic goes on): once every
/// source of the job has finished its run, the frontier's elements are all
/// at [`STOPPED`], holding the sources' last watermarks, and an operator acts
/// below those one last time and leaves the rest to the next run. Sources
/// let go only after that ([`crate::stop`]), so a frontier seen later may
/// have jumped: an operator must not act on it.
pub fn event_progress<'a>(frontier: impl IntoIterator<Item = &'a Time>) -> EventProgress {
    let (mut least, mut running, mut any) = (u64::MAX, false, false);
    for t in frontier {
        least = least.min(t.event);
        running |= t.epoch < STOPPED;
        any = true;
    }
    match (running, any) {
        (true, _) => EventProgress::Below(least),
        (false, true) => EventProgress::Ending { below: least },
        (false, false) => EventProgress::Ending { below: 0 },
    }
}

impl Time {
    /// Creates a timestamp.
    pub const fn new(epoch: u64, event: u64) -> Self {
        Time { epoch, event }
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.event == u64::MAX {
            write!(f, "({}, MAX)", self.epoch)
        } else {
            write!(f, "({}, {})", self.epoch, self.event)
        }
    }
}

impl PartialOrder for Time {
    #[inline]
    fn less_equal(&self, other: &Self) -> bool {
        self.epoch <= other.epoch && self.event <= other.event
    }
}

impl Empty for Time {}

impl Timestamp for Time {
    type Summary = Time;
    fn minimum() -> Self {
        Time::new(0, 0)
    }
}

/// Summaries add component-wise; K2 dataflows have no loops, so they are
/// only ever the identity, but timely needs the arithmetic to be defined.
impl PathSummary<Time> for Time {
    #[inline]
    fn results_in(&self, src: &Time) -> Option<Time> {
        Some(Time::new(
            self.epoch.checked_add(src.epoch)?,
            self.event.checked_add(src.event)?,
        ))
    }
    #[inline]
    fn followed_by(&self, other: &Time) -> Option<Time> {
        self.results_in(other)
    }
}

impl Refines<()> for Time {
    fn to_inner(_: ()) -> Time {
        Time::minimum()
    }
    fn to_outer(self) {}
    fn summarize(_: Time) {}
}

impl differential_dataflow::lattice::Lattice for Time {
    #[inline]
    fn join(&self, other: &Self) -> Self {
        Time::new(self.epoch.max(other.epoch), self.event.max(other.event))
    }
    #[inline]
    fn meet(&self, other: &Self) -> Self {
        Time::new(self.epoch.min(other.epoch), self.event.min(other.event))
    }
}

/// True when no element of `frontier` has an epoch `<= epoch`: every record of
/// that epoch (and earlier ones) has been seen, so the epoch may be committed.
pub fn epoch_complete<'a>(frontier: impl IntoIterator<Item = &'a Time>, epoch: u64) -> bool {
    !frontier.into_iter().any(|t| t.epoch <= epoch)
}

/// The least event-time part over `frontier`: state for event times below it
/// will never be needed by an on-time record again. An empty frontier (the
/// input is finished) gives `u64::MAX`.
pub fn event_frontier<'a>(frontier: impl IntoIterator<Item = &'a Time>) -> u64 {
    frontier.into_iter().map(|t| t.event).min().unwrap_or(u64::MAX)
}

/// The element of a message's stamp that its records are held at and that
/// capabilities are delayed to: the least by `(epoch, event)`. `None` for an
/// empty stamp.
pub fn stamp_time<'a>(stamp: impl IntoIterator<Item = &'a Time>) -> Option<Time> {
    stamp.into_iter().min().copied()
}

/// The least epoch over `frontier`, or `None` when it is empty (finished).
pub fn epoch_frontier<'a>(frontier: impl IntoIterator<Item = &'a Time>) -> Option<u64> {
    frontier.into_iter().map(|t| t.epoch).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_order() {
        let a = Time::new(1, 10);
        assert!(a.less_equal(&Time::new(1, 10)));
        assert!(a.less_equal(&Time::new(2, 10)));
        assert!(!a.less_equal(&Time::new(2, 9)));
        assert!(!Time::new(2, 9).less_equal(&a));
    }

    #[test]
    fn frontier_checks_read_every_element() {
        let f = [Time::new(4, u64::MAX), Time::new(7, 84869), Time::new(8, 84864)];
        assert!(epoch_complete(&f, 3));
        assert!(!epoch_complete(&f, 4));
        assert_eq!(event_frontier(&f), 84864);
        assert_eq!(epoch_frontier(&f), Some(4));
        assert!(epoch_complete(&[], 1_000));
        assert_eq!(event_frontier(&[]), u64::MAX);
    }

    #[test]
    fn the_end_of_a_run_is_not_the_end_of_the_input() {
        let open = [Time::new(3, 700), Time::new(4, 500)];
        assert_eq!(event_progress(&open), EventProgress::Below(500));
        // Some sources done, some still reading: their watermarks hold.
        let mixed = [Time::new(STOPPED, 300), Time::new(4, 500)];
        assert_eq!(event_progress(&mixed), EventProgress::Below(300));
        // Every source's run is over: their watermarks still hold.
        let over = [Time::new(STOPPED, 300), Time::new(STOPPED, 900)];
        assert_eq!(event_progress(&over), EventProgress::Ending { below: 300 });
        assert_eq!(event_progress(&[]), EventProgress::Ending { below: 0 });
    }
}
