//! The checkpointed offsets, copied to the job's Kafka consumer group.
//!
//! K2 never reads these back: a job resumes from its manifests, which commit
//! offsets together with the tables. The copy exists so that the tools that
//! watch consumer groups (`kafka-consumer-groups.sh --describe`, Burrow,
//! Kafka UIs, cloud consoles) show how far the job has committed.
//!
//! The committer hands each committed cut's offsets over and goes on: a
//! thread of its own commits them, newest only (a cut that arrives while
//! the previous one is being committed replaces any waiting one), so a slow
//! or unreachable broker never delays a cut. A commit the broker refuses is
//! tried again with backoff (up to a minute) until it or a newer one
//! succeeds; while the group's coordinator is unreachable, librdkafka holds
//! the commit until it is back. Failures are logged at most once a minute,
//! saying how many were held back, and never stop the job.

use crate::kafka::Quiet;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Offsets by topic and partition, as in manifests.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// At most one failure line per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A refused commit is tried again after this long, doubling up to
/// [`RETRY_MAX`], unless a newer cut comes first.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// See [`RETRY_FIRST`].
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Slot {
    /// The newest offsets not committed yet, with their cut's epoch.
    waiting: Option<(u64, Offsets)>,
    /// No more offsets will come: commit what waits, then end.
    closing: bool,
    /// The thread is done committing.
    done: bool,
}

/// Commits checkpointed offsets to a consumer group; see the module docs.
pub struct GroupOffsets {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupOffsets {
    /// Starts the thread; `client` is the source's consumer config (its
    /// `group.id` is the group), `counted` hears of every commit's result.
    pub fn start(client: ClientConfig, counted: impl Fn(bool) + Send + 'static) -> GroupOffsets {
        let mut consumer: Option<BaseConsumer<Quiet>> = None;
        let to_group = move |offsets: &Offsets| -> Result<(), String> {
            if consumer.is_none() {
                let created = client
                    .create_with_context(Quiet)
                    .map_err(|e| format!("create a consumer: {e}"))?;
                consumer = Some(created);
            }
            commit(consumer.as_ref().expect("created above"), offsets)
        };
        Self::spawn(to_group, counted)
    }

    /// Starts the thread with `commit` doing the commits. The thread drops
    /// `commit` (closing its client, which can take long while the brokers
    /// are unreachable) after it is done, so that no one waits for that.
    fn spawn(
        mut commit: impl FnMut(&Offsets) -> Result<(), String> + Send + 'static,
        counted: impl Fn(bool) + Send + 'static,
    ) -> GroupOffsets {
        let slot: Arc<(Mutex<Slot>, Condvar)> = Arc::default();
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name("k2-group-offsets".into())
            .spawn(move || {
                commit_loop(&shared, &counted, &mut commit);
                let (lock, cvar) = &*shared;
                lock.lock().expect("group offsets").done = true;
                cvar.notify_all();
                drop(commit);
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the consumer-group offset thread; the group will show no offsets");
                None
            }
        };
        GroupOffsets {
            slot,
            thread: Mutex::new(thread),
        }
    }

    /// Offers a committed cut's offsets; returns at once.
    pub fn offer(&self, epoch: u64, offsets: Offsets) {
        let (lock, cvar) = &*self.slot;
        lock.lock().expect("group offsets").waiting = Some((epoch, offsets));
        cvar.notify_all();
    }

    /// Commits what waits, waiting up to `limit` for that; the thread then
    /// ends on its own, closing its client.
    pub fn close(&self, limit: Duration) {
        let Some(thread) = self.thread.lock().expect("group offsets thread").take() else {
            return;
        };
        let (lock, cvar) = &*self.slot;
        let mut slot = lock.lock().expect("group offsets");
        slot.closing = true;
        cvar.notify_all();
        let deadline = Instant::now() + limit;
        while !slot.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "the consumer group's offsets were not committed within {limit:?}; they are informational, the checkpoint is complete"
                );
                return;
            }
            slot = cvar.wait_timeout(slot, left).expect("group offsets").0;
        }
        // Not joined: it may still be closing its client.
        drop(thread);
    }
}

impl Drop for GroupOffsets {
    fn drop(&mut self) {
        self.close(Duration::from_secs(5));
    }
}

/// Commits offered offsets until closed; see the module docs.
fn commit_loop(
    slot: &(Mutex<Slot>, Condvar),
    counted: &dyn Fn(bool),
    commit: &mut dyn FnMut(&Offsets) -> Result<(), String>,
) {
    let mut last: Option<Offsets> = None;
    // Offsets whose commit was refused, tried again after `backoff` unless
    // newer ones come first: a quiet input brings no new cut to retry with.
    let mut failed: Option<(u64, Offsets)> = None;
    let mut backoff = RETRY_FIRST;
    let mut failures = Failures::default();
    loop {
        let (epoch, offsets, last_try) = {
            let (lock, cvar) = slot;
            let mut s = lock.lock().expect("group offsets");
            loop {
                if let Some((epoch, offsets)) = s.waiting.take() {
                    break (epoch, offsets, false);
                }
                if s.closing {
                    match failed.take() {
                        Some((epoch, offsets)) => break (epoch, offsets, true),
                        None => return,
                    }
                }
                if failed.is_none() {
                    s = cvar.wait(s).expect("group offsets");
                    continue;
                }
                let (guard, waited) = cvar.wait_timeout(s, backoff).expect("group offsets");
                s = guard;
                if waited.timed_out()
                    && s.waiting.is_none()
                    && let Some((epoch, offsets)) = failed.take()
                {
                    break (epoch, offsets, false);
                }
            }
        };
        failed = None;
        if last.as_ref() == Some(&offsets) {
            continue;
        }
        let result = commit(&offsets);
        counted(result.is_ok());
        match result {
            Ok(()) => {
                failures.recovered(epoch);
                last = Some(offsets);
                backoff = RETRY_FIRST;
            }
            Err(e) => {
                failures.failed(epoch, &e);
                if !last_try {
                    failed = Some((epoch, offsets));
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// Commits `offsets` to the consumer's group, synchronously (on this
/// thread of its own): an asynchronous commit of a consumer that never
/// joins its group got no answer event from librdkafka when we tried.
fn commit(consumer: &BaseConsumer<Quiet>, offsets: &Offsets) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in offsets {
        for (partition, next) in partitions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| e.to_string())?;
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    let committed = consumer.commit(&tpl, CommitMode::Sync);
    // Serve the client's queue (errors, logs): nothing else polls this
    // consumer, and it would grow.
    while consumer.poll(Duration::ZERO).is_some() {}
    committed.map_err(|e| e.to_string())?;
    // A commit can succeed as a whole and fail for some partitions.
    let failed: Vec<String> = tpl
        .elements()
        .iter()
        .filter_map(|e| {
            e.error()
                .err()
                .map(|err| format!("{}/{}: {err}", e.topic(), e.partition()))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join(", "))
    }
}

/// Rate-limited failure logging.
#[derive(Default)]
struct Failures {
    last_log: Option<Instant>,
    held_back: u64,
    failing: bool,
}

impl Failures {
    fn failed(&mut self, epoch: u64, error: &str) {
        self.failing = true;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                epoch,
                error,
                held_back = self.held_back,
                "cannot commit the checkpointed offsets to the consumer group (informational only: \
                 the job goes on, and resumes from its checkpoints)"
            );
            self.last_log = Some(Instant::now());
            self.held_back = 0;
        } else {
            self.held_back += 1;
        }
    }

    fn recovered(&mut self, epoch: u64) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(epoch, "committing offsets to the consumer group works again");
            self.held_back = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(next: i64) -> Offsets {
        [("t".to_string(), [(0, next)].into())].into()
    }

    #[test]
    fn a_refused_commit_is_tried_again_until_it_succeeds() {
        let committed = Arc::new(Mutex::new(Vec::new()));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (committed.clone(), results.clone());
        let mut refusals = 2;
        let group = GroupOffsets::spawn(
            move |o: &Offsets| {
                if refusals > 0 {
                    refusals -= 1;
                    return Err("GROUP_AUTHORIZATION_FAILED".into());
                }
                c.lock().unwrap().push(o.clone());
                Ok(())
            },
            move |ok| r.lock().unwrap().push(ok),
        );
        group.offer(1, offsets(5));
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "never tried again");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*results.lock().unwrap(), [false, false, true]);
        // The same offsets again: nothing to do. Newer ones: committed.
        group.offer(2, offsets(5));
        group.offer(3, offsets(9));
        group.close(Duration::from_secs(10));
        assert_eq!(*committed.lock().unwrap(), [offsets(5), offsets(9)]);
    }

    #[test]
    fn a_hanging_commit_never_blocks_the_committer_or_the_end() {
        let group = GroupOffsets::spawn(
            |_: &Offsets| {
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            },
            |_| {},
        );
        let started = Instant::now();
        group.offer(1, offsets(5));
        group.offer(2, offsets(6));
        assert!(started.elapsed() < Duration::from_millis(100), "offer returns at once");
        group.close(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(1), "close keeps to its limit");
    }
}
