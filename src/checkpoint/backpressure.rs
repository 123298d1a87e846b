//! Backpressure: while a participant of the cut cannot write (a full disk, a
//! storage outage), the sources stop reading, so that memory stays bounded
//! instead of growing with the input.
//!
//! A sink that fails to stage a commit group holds a [`Stall`] until a write
//! succeeds again; sources skip their polls while any is held (they still
//! close epochs, so nothing else waits on them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The job-wide count of stalled writers, shared by sources and sinks.
#[derive(Clone, Debug, Default)]
pub struct Backpressure(Arc<AtomicUsize>);

impl Backpressure {
    /// True while any writer is stalled: sources should not read.
    pub fn is_stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Marks one writer stalled until the returned guard is dropped.
    pub fn stall(&self) -> Stall {
        self.0.fetch_add(1, Ordering::Relaxed);
        Stall(self.0.clone())
    }
}

/// One stalled writer; released on drop.
#[derive(Debug)]
pub struct Stall(Arc<AtomicUsize>);

impl Drop for Stall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_while_any_guard_lives() {
        let b = Backpressure::default();
        assert!(!b.is_stalled());
        let one = b.stall();
        let two = b.clone().stall();
        drop(one);
        assert!(b.is_stalled());
        drop(two);
        assert!(!b.is_stalled());
    }
}
