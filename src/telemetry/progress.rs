//! The periodic progress line of a running job.
//!
//! It is a `tracing` event (target `k2::progress`, level info), not a line
//! of its own on stderr: it then goes where the logs go, formatted like them
//! (`--log-format json` makes it a JSON object with the figures as fields),
//! and `RUST_LOG=k2::progress=off` silences it. `k2 run` emits it when its
//! stderr is a terminal, where someone watches, and not when it runs under
//! a supervisor that collects its logs (systemd, Kubernetes, `k2 cluster`),
//! where a line every few seconds per process is noise next to the metrics;
//! `--progress always` asks for it there too.

use super::snapshot::Snapshot;

/// Emits the progress line for the interval from `before` to `now`.
pub fn report(before: &Snapshot, now: &Snapshot) {
    let p = Progress::between(before, now);
    // Unknown figures are left out of the line.
    tracing::info!(
        target: "k2::progress",
        msg_per_s = p.msg_per_s,
        lag = p.lag,
        watermark_lag_s = p.watermark_lag_s.map(tenths),
        last_commit_s = p.last_commit_s.map(tenths),
        rss_mib = p.rss_mib,
        "progress"
    );
}

fn tenths(s: f64) -> f64 {
    (s * 10.0).round() / 10.0
}

/// The figures of one progress line.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Kafka messages read per second over the interval.
    pub msg_per_s: u64,
    /// Messages not read yet, over all partitions of this process.
    pub lag: Option<i64>,
    /// How far event time trails the wall clock, seconds.
    pub watermark_lag_s: Option<f64>,
    /// Seconds since the newest checkpoint (the committing process only).
    pub last_commit_s: Option<f64>,
    /// Resident memory, MiB.
    pub rss_mib: u64,
}

impl Progress {
    /// The figures from two snapshots, `before` the older.
    pub fn between(before: &Snapshot, now: &Snapshot) -> Progress {
        let secs = now.at.duration_since(before.at).as_secs_f64();
        let read = now.messages.saturating_sub(before.messages) as f64;
        Progress {
            msg_per_s: if secs > 0.0 { (read / secs).round() as u64 } else { 0 },
            lag: now.total_lag(),
            watermark_lag_s: now.watermark_lag_s(),
            last_commit_s: now.checkpoint_age_s(),
            rss_mib: now.rss_bytes.unwrap_or(0) / (1024 * 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::snapshot::{CheckpointInfo, PartitionLag};
    use std::time::{Duration, Instant};

    fn snapshot(at: Instant, messages: u64, now_ms: i64) -> Snapshot {
        Snapshot {
            at,
            now_ms,
            operators: Vec::new(),
            messages,
            bytes: 0,
            source_errors: 0,
            control: Default::default(),
            partitions: vec![
                PartitionLag {
                    topic: "t".into(),
                    partition: 0,
                    position: 5,
                    end: Some(9),
                    lag: Some(4),
                },
                PartitionLag {
                    topic: "t".into(),
                    partition: 1,
                    position: 5,
                    end: None,
                    lag: None,
                },
            ],
            watermark_us: Some(1_000_000_000_000),
            commits: None,
            checkpoint: Some(CheckpointInfo {
                epoch: 1,
                created_ms: 1_000_000_500,
                state_bytes: 0,
            }),
            rss_bytes: Some(3 << 20),
        }
    }

    #[test]
    fn figures_over_an_interval() {
        let t0 = Instant::now();
        let before = snapshot(t0, 100, 1_000_000_000);
        let now = snapshot(t0 + Duration::from_secs(5), 10_100, 1_000_002_000);
        let p = Progress::between(&before, &now);
        assert_eq!(p.msg_per_s, 2000);
        assert_eq!(p.lag, Some(4), "unknown partitions are left out");
        assert_eq!(p.watermark_lag_s, Some(2.0));
        assert_eq!(p.last_commit_s, Some(1.5));
        assert_eq!(p.rss_mib, 3);
    }
}
