//! Test-only fault injection for the crash tests.
//!
//! `K2_FAULT=<point>:<n>` makes the process abort (like `kill -9`: no
//! cleanup, no final commit) the `n`-th time it reaches `<point>`. The points
//! are the gaps of the commit protocol:
//!
//! * `before-manifest`: data files are written, the manifest is not;
//! * `after-manifest`: the manifest is written, no table is committed;
//! * `in-kafka-transaction`: a transactional Kafka sink has sent the cut's
//!   records, its transaction is not committed;
//! * `between-tables`: one table of the cut is committed, the next is not.
//!
//! Without the variable this is one relaxed atomic load per commit.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

fn plan() -> &'static Option<(String, u64)> {
    PLAN.get_or_init(|| {
        let v = std::env::var("K2_FAULT").ok()?;
        let (point, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
        Some((point.to_string(), n.parse().unwrap_or(1)))
    })
}

/// Aborts the process if the fault plan says so for this `point`.
pub fn point(point: &str) {
    if let Some((p, n)) = plan()
        && p == point
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("K2_FAULT: aborting at `{point}` (occurrence {n})");
        std::process::abort();
    }
}
