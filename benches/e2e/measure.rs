//! What a process tree costs, read from `/proc`: CPU seconds summed over the
//! whole tree, peak RSS, wall time, and the broker's CPU over the same span.
//!
//! CPU comes from the root's `/proc/<pid>/stat` read while it is a zombie
//! (exited, not yet reaped): `utime + stime + cutime + cstime` then covers the
//! root and every descendant that was waited for (a launcher script's JVM,
//! say). Peak RSS is the sum over the tree's processes of each one's `VmHWM`,
//! sampled every 100 ms, and so are the context switches of every thread of
//! the tree (`/proc/<pid>/task/<tid>/status`; a thread that ends between two
//! samples loses at most its last 100 ms). Nothing here needs `unsafe` or libc.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kernel clock ticks per second (`getconf CLK_TCK`, 100 on Linux/x86).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` after the command name: `[0]` is the
/// state, `[1]` the parent pid, `[11..=14]` utime, stime, cutime, cstime.
fn stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn ticks(fields: &[String], range: std::ops::RangeInclusive<usize>) -> f64 {
    range.filter_map(|i| fields.get(i)?.parse::<f64>().ok()).sum()
}

/// CPU seconds a live process has used itself (threads included, children not).
pub fn cpu_s(pid: u32) -> Option<f64> {
    stat(pid).map(|f| ticks(&f, 11..=12) / clk_tck())
}

/// `pid` and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parent = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(ppid) = stat(pid).and_then(|f| f.get(1)?.parse::<u32>().ok())
            {
                parent.insert(pid, ppid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|&(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    out
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `(voluntary, involuntary)` context switches of every thread of `pid`,
/// by thread id, and how many threads it has.
fn thread_switches(pid: u32, into: &mut HashMap<(u32, u32), (u64, u64)>) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut threads = 0;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        threads += 1;
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let now = (field("voluntary_ctxt_switches:"), field("nonvoluntary_ctxt_switches:"));
        let e = into.entry((pid, tid)).or_default();
        *e = (e.0.max(now.0), e.1.max(now.1));
    }
    threads
}

/// The project broker's pid, from `var/kafka/kafka.pid` (or `$K2_KAFKA_DIR`).
pub fn broker_pid(root: &Path) -> Option<u32> {
    let dir = std::env::var_os("K2_KAFKA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("var/kafka"));
    let pid: u32 = std::fs::read_to_string(dir.join("kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    cpu_s(pid).map(|_| pid)
}

/// What one process tree used.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// From spawn to exit, seconds.
    pub wall_s: f64,
    /// CPU seconds of the whole tree (user + system).
    pub cpu_s: f64,
    /// Sum of the tree's per-process peak RSS, MiB.
    pub peak_rss_mib: f64,
    /// CPU seconds the broker used over the same span.
    pub broker_cpu_s: f64,
    /// Voluntary context switches of every thread of the tree (it blocked).
    pub voluntary_switches: u64,
    /// Involuntary context switches of every thread of the tree (preempted).
    pub involuntary_switches: u64,
    /// The most threads the tree had at once.
    pub peak_threads: usize,
}

#[derive(Default)]
struct Shared {
    hwm: HashMap<u32, u64>,
    switches: HashMap<(u32, u32), (u64, u64)>,
    peak_threads: usize,
    cpu_s: Option<f64>,
    exited: Option<Instant>,
}

/// Follows a spawned child until it exits.
pub struct Tracker {
    started: Instant,
    broker: Option<(u32, f64)>,
    shared: Arc<Mutex<Shared>>,
    thread: std::thread::JoinHandle<()>,
}

impl Tracker {
    /// Starts following `child`; `started` should be taken just before the spawn.
    pub fn start(child: &Child, started: Instant, broker: Option<u32>) -> Tracker {
        let pid = child.id();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let tck = clk_tck();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            while let Some(f) = stat(pid) {
                if f[0] == "Z" || f[0] == "X" {
                    let mut g = s.lock().unwrap();
                    g.cpu_s = Some(ticks(&f, 11..=14) / tck);
                    g.exited = Some(Instant::now());
                    break;
                }
                let mut threads = 0;
                for p in tree(pid) {
                    let mut g = s.lock().unwrap();
                    if let Some(kib) = vm_hwm_kib(p) {
                        let e = g.hwm.entry(p).or_default();
                        *e = (*e).max(kib);
                    }
                    threads += thread_switches(p, &mut g.switches);
                }
                let mut g = s.lock().unwrap();
                g.peak_threads = g.peak_threads.max(threads);
                drop(g);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Tracker {
            started,
            broker: broker.and_then(|b| Some((b, cpu_s(b)?))),
            shared,
            thread,
        }
    }

    /// Waits for the child to exit (it must be about to, or be told to) and
    /// returns what it used and its exit status.
    pub fn finish(self, mut child: Child) -> (Usage, std::process::ExitStatus) {
        let _ = self.thread.join();
        let broker_cpu_s = self
            .broker
            .and_then(|(pid, before)| Some(cpu_s(pid)? - before))
            .unwrap_or(0.0);
        let status = child.wait().expect("wait");
        let g = self.shared.lock().unwrap();
        let ended = g.exited.unwrap_or_else(Instant::now);
        let usage = Usage {
            wall_s: ended.duration_since(self.started).as_secs_f64(),
            cpu_s: g.cpu_s.unwrap_or(0.0),
            peak_rss_mib: g.hwm.values().sum::<u64>() as f64 / 1024.0,
            broker_cpu_s,
            voluntary_switches: g.switches.values().map(|s| s.0).sum(),
            involuntary_switches: g.switches.values().map(|s| s.1).sum(),
            peak_threads: g.peak_threads,
        };
        (usage, status)
    }
}

/// Sends SIGTERM to `pid` (through `kill(1)`, to stay free of `unsafe`).
pub fn terminate(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}
