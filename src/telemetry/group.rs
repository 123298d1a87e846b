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
//! or unreachable broker never delays a cut. A failure is logged at most
//! once a minute, saying how many were held back, and never stops the job.

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

#[derive(Default)]
struct Slot {
    /// The newest offsets not committed yet, with their cut's epoch.
    waiting: Option<(u64, Offsets)>,
    /// No more offsets will come: commit what waits, then end.
    closing: bool,
    /// The thread has ended.
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
        let slot: Arc<(Mutex<Slot>, Condvar)> = Arc::default();
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name("k2-group-offsets".into())
            .spawn(move || {
                commit_loop(&client, &shared, &counted);
                let (lock, cvar) = &*shared;
                lock.lock().expect("group offsets").done = true;
                cvar.notify_all();
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

    /// Commits what waits and ends the thread, waiting up to `limit`.
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
        drop(slot);
        let _ = thread.join();
    }
}

impl Drop for GroupOffsets {
    fn drop(&mut self) {
        self.close(Duration::from_secs(5));
    }
}

fn commit_loop(client: &ClientConfig, slot: &(Mutex<Slot>, Condvar), counted: &dyn Fn(bool)) {
    let mut consumer: Option<BaseConsumer<Quiet>> = None;
    let mut last: Option<Offsets> = None;
    let mut failures = Failures::default();
    loop {
        let (epoch, offsets) = {
            let (lock, cvar) = slot;
            let mut s = lock.lock().expect("group offsets");
            loop {
                if let Some(next) = s.waiting.take() {
                    break next;
                }
                if s.closing {
                    return;
                }
                s = cvar.wait(s).expect("group offsets");
            }
        };
        if last.as_ref() == Some(&offsets) {
            continue;
        }
        let result = match &consumer {
            Some(c) => commit(c, &offsets),
            None => match client.create_with_context::<_, BaseConsumer<Quiet>>(Quiet) {
                Ok(c) => {
                    let r = commit(&c, &offsets);
                    consumer = Some(c);
                    r
                }
                Err(e) => Err(format!("create a consumer: {e}")),
            },
        };
        counted(result.is_ok());
        match result {
            Ok(()) => {
                failures.recovered(epoch);
                last = Some(offsets);
            }
            Err(e) => failures.failed(epoch, &e),
        }
    }
}

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
    // Serve the client's queue (commit callbacks, errors): nothing else
    // polls this consumer, and it would grow.
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
