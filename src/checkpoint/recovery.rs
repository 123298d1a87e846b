//! Recovery, before any worker starts (see `src/sink/iceberg/DESIGN.md`):
//!
//! 1. read the newest manifest, and ask every participant to check that it
//!    agrees (tables ahead of the checkpoints mean checkpoints were lost;
//!    refuse, never resume from an older cut) and that the part it must
//!    still commit is intact;
//! 2. roll the cut forward: every participant commits its part, skipping
//!    what is already there;
//! 3. check the cut's state files, remove state files no kept manifest
//!    references, and let every participant clean what crashed runs left;
//! 4. hand the sources where to resume ([`Resume`]) and the operators the
//!    manifest's state.
//!
//! `--reset` discards the checkpoints; when participants already hold rows
//! of the job it refuses until confirmed, after saying what it would do.

use super::fence::Fence;
use super::manifest::{Manifest, ManifestStore};
use super::participant::Participant;
use super::state::StateStore;
use crate::config::StartPosition;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Where a resumed job's sources start, from its checkpoint: per `(topic
/// index, partition)`, the next offset, the largest event time (µs) and the
/// Kafka timestamp of the last message read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Next offsets.
    pub offsets: BTreeMap<(u16, i32), i64>,
    /// Largest event times read, µs.
    pub watermarks: BTreeMap<(u16, i32), u64>,
    /// Kafka timestamps of the last messages read, ms.
    pub last_ts_ms: BTreeMap<(u16, i32), i64>,
    /// Whether there is a checkpoint at all (then partitions it lacks are new).
    pub checkpointed: bool,
}

impl Resume {
    /// Where to resume after `manifest`, for the job's topics (by index).
    pub fn of(topics: &[String], manifest: Option<&Manifest>) -> Resume {
        let mut resume = Resume {
            checkpointed: manifest.is_some(),
            ..Resume::default()
        };
        let Some(manifest) = manifest else { return resume };
        let index = |topic: &str| topics.iter().position(|t| t == topic).map(|i| i as u16);
        for (topic, parts) in &manifest.offsets {
            let Some(t) = index(topic) else {
                tracing::warn!(
                    topic,
                    "the checkpoint has offsets of a topic the config no longer reads"
                );
                continue;
            };
            resume.offsets.extend(parts.iter().map(|(p, o)| ((t, *p), *o)));
        }
        for (topic, parts) in &manifest.max_event_us {
            if let Some(t) = index(topic) {
                resume
                    .watermarks
                    .extend(parts.iter().map(|(p, us)| ((t, *p), *us as u64)));
            }
        }
        for (topic, parts) in &manifest.last_ts_ms {
            if let Some(t) = index(topic) {
                resume.last_ts_ms.extend(parts.iter().map(|(p, ts)| ((t, *p), *ts)));
            }
        }
        resume
    }
}

/// An explicit request to start afresh (`k2 run --reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// Where the sources start.
    pub position: StartPosition,
    /// The user confirmed it although the tables hold rows (`--yes`).
    pub acknowledged: bool,
}

/// What recovery hands the run.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The checkpoint resumed from, if any.
    pub manifest: Option<Manifest>,
    /// Where the sources resume.
    pub resume: Resume,
}

/// Recovers job `job` from the checkpoints in `manifests`/`state`; see the
/// module docs. `topics` are the job's topics by index.
pub fn recover(
    job: &str,
    topics: &[String],
    manifests: &ManifestStore,
    state: &StateStore,
    participants: &[Arc<dyn Participant>],
    fence: &Fence,
    reset: Option<Reset>,
) -> Result<Recovered> {
    if let Some(reset) = reset {
        let mut held = Vec::new();
        for p in participants {
            held.extend(p.holdings(job)?);
        }
        if !held.is_empty() && !reset.acknowledged {
            return Err(Error::Checkpoint(reset_warning(job, reset.position, &held)));
        }
        tracing::warn!(job, position = ?reset.position, "--reset: discarding the job's checkpoints and starting afresh");
        manifests.clear()?;
        state.prune(&Default::default(), None)?;
        return Ok(Recovered {
            manifest: None,
            resume: Resume::of(topics, None),
        });
    }
    let newest = manifests.latest()?;
    if let Some(m) = &newest
        && m.job != job
    {
        return Err(Error::Checkpoint(format!(
            "the checkpoints hold job `{}`, not `{job}`",
            m.job
        )));
    }
    for p in participants {
        p.check(job, newest.as_ref())?;
    }
    let Some(manifest) = newest else {
        return Ok(Recovered::default());
    };
    // Roll forward: a crash between the manifest and the commits.
    for p in participants {
        if let Some(part) = manifest.parts.get(p.name()) {
            let committed = p.commit(&manifest, part, Some(fence))?;
            if committed.commits > 0 {
                tracing::info!(
                    participant = p.name(),
                    epoch = manifest.epoch,
                    "recovery: committed the checkpointed cut (roll forward)"
                );
            }
        }
    }
    if let Some(name) = manifest
        .parts
        .keys()
        .find(|n| !participants.iter().any(|p| p.name() == *n))
    {
        return Err(Error::Checkpoint(format!(
            "the checkpoint of epoch {} has a part for `{name}`, which this job does not write (another dataflow?)",
            manifest.epoch
        )));
    }
    for f in &manifest.state {
        if !state.exists(f)? {
            return Err(Error::Checkpoint(format!(
                "state file {} of epoch {} is missing",
                state.location(f),
                manifest.epoch
            )));
        }
    }
    // Hygiene: files of crashed runs that no kept checkpoint references.
    let kept: Vec<Manifest> = manifests
        .epochs()?
        .into_iter()
        .filter_map(|e| manifests.read(e).ok())
        .collect();
    let live: HashSet<String> = kept
        .iter()
        .flat_map(|m| m.state.iter().map(|s| s.path.clone()))
        .collect();
    let removed = state.prune(&live, None)?;
    if removed > 0 {
        tracing::info!(
            state_files = removed,
            "recovery: removed state files no checkpoint references"
        );
    }
    for p in participants {
        p.clean(job, &kept)?;
    }
    tracing::info!(
        epoch = manifest.epoch,
        generation = fence.generation,
        "resuming after the last checkpoint"
    );
    Ok(Recovered {
        resume: Resume::of(topics, Some(&manifest)),
        manifest: Some(manifest),
    })
}

/// What `--reset` would do to what the participants hold.
fn reset_warning(job: &str, position: StartPosition, held: &[String]) -> String {
    let (name, effect) = match position {
        StartPosition::Earliest => (
            "earliest",
            "re-reads every message Kafka still retains and writes it again: what is already there will be there twice",
        ),
        StartPosition::Latest => (
            "latest",
            "starts at the end of every partition: what is there stays, and every message produced since the last checkpoint is skipped",
        ),
    };
    format!(
        "--reset {name}: job `{job}` already has rows in {}. Discarding its checkpoints {effect}. The tables \
         themselves are not changed. If that is what you want, run again with --yes",
        held.join(", ")
    )
}
