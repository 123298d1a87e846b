//! `k2 cluster`: launches the processes of a job on this machine and keeps
//! the job running.
//!
//! Timely cannot go on after losing a process: its peers would wait forever
//! (or fail) on the lost connections. So when a process dies, the supervisor
//! logs why, kills the others (SIGKILL is safe: exactly once never depends on
//! a clean stop) and starts all of them again; process 0 recovers from the
//! newest checkpoint and hands it to the others (see [`super::handshake`]).
//! On Ctrl-C or SIGTERM it asks every process to stop with a final commit.
//!
//! Every few seconds it prints each process's state and the job's progress
//! as the newest checkpoint shows it.

use crate::checkpoint::ManifestStore;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to launch and how to supervise it.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `k2` executable.
    pub program: PathBuf,
    /// The dataflow's name.
    pub dataflow: String,
    /// The job's config file.
    pub config: PathBuf,
    /// The job's checkpoint store (for progress).
    pub store: Arc<dyn crate::checkpoint::Store>,
    /// A local folder for the hostfile.
    pub work_dir: PathBuf,
    /// Processes.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// Run bounded (`--bounded`).
    pub bounded: bool,
    /// `--reset earliest|latest`, on the first start only.
    pub reset: Option<String>,
    /// First loopback port; free ports are picked when `None`.
    pub base_port: Option<u16>,
    /// Give up after this many restarts.
    pub max_restarts: usize,
    /// How often to print the cluster's state.
    pub status_every: Duration,
}

/// How a supervised job ended.
#[derive(Debug, Default)]
pub struct ClusterReport {
    /// Restarts of the whole cluster after a process died.
    pub restarts: usize,
    /// The JSON run report of every process, by process index (the last
    /// line each printed on stdout).
    pub reports: Vec<Option<serde_json::Value>>,
}

struct Member {
    index: usize,
    child: Child,
    started: Instant,
    exit: Option<ExitStatus>,
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Bind all first so that the ports differ, then release them.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::Other(format!("pick free ports: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::Other(format!("pick free ports: {e}")))
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// "exit code 1", "signal 9 (SIGKILL)", …
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(9)) => "signal 9 (SIGKILL)".into(),
        (None, Some(6)) => "signal 6 (SIGABRT)".into(),
        (None, Some(15)) => "signal 15 (SIGTERM)".into(),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Forwards a child's output: stdout lines that are JSON objects are its run
/// report; everything else goes to stderr prefixed with the process index.
fn forward(index: usize, child: &mut Child, reports: Arc<Mutex<Vec<Option<serde_json::Value>>>>) {
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v.is_object() => reports.lock().expect("reports")[index] = Some(v),
                    _ => eprintln!("[p{index}] {line}"),
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("[p{index}] {line}");
            }
        });
    }
}

/// Runs the cluster until it finishes (bounded), is stopped via `stop`, or
/// restarts more than `max_restarts` times.
pub fn supervise(spec: &ClusterSpec, stop: Arc<AtomicBool>) -> Result<ClusterReport> {
    if spec.processes == 0 || spec.workers == 0 {
        return Err(Error::config("cluster", "needs at least one process and one worker"));
    }
    let ports = match spec.base_port {
        Some(base) => (0..spec.processes).map(|i| base + i as u16).collect(),
        None => free_ports(spec.processes)?,
    };
    let cluster_dir = spec.work_dir.clone();
    std::fs::create_dir_all(&cluster_dir).map_err(|e| Error::io("create", &cluster_dir, e))?;
    let hostfile = cluster_dir.join("hosts");
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&hostfile, hosts).map_err(|e| Error::io("write", &hostfile, e))?;

    let reports = Arc::new(Mutex::new(vec![None; spec.processes]));
    let mut restarts = 0;
    loop {
        let mut members = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let mut cmd = Command::new(&spec.program);
            cmd.arg("run")
                .arg(&spec.dataflow)
                .arg("--config")
                .arg(&spec.config)
                .args(["-w", &spec.workers.to_string()])
                .args(["-n", &spec.processes.to_string()])
                .args(["-p", &index.to_string()])
                .arg("-h")
                .arg(&hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if spec.bounded {
                cmd.arg("--bounded");
            }
            // Discarding checkpoints is for the first start only.
            if let (Some(position), 0) = (&spec.reset, restarts) {
                // The supervisor's own --reset was confirmed (or refused) by the user.
                cmd.args(["--reset", position, "--yes"]);
            }
            // Own process group: a terminal's Ctrl-C reaches the supervisor
            // only, which then asks each process to stop exactly once.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let mut child = cmd.spawn().map_err(|e| Error::io("start", &spec.program, e))?;
            tracing::info!(process = index, pid = child.id(), port, "cluster: process started");
            forward(index, &mut child, reports.clone());
            members.push(Member {
                index,
                child,
                started: Instant::now(),
                exit: None,
            });
        }
        match watch(spec, &mut members, &stop)? {
            Watched::Finished => {
                let failed: Vec<String> = members
                    .iter()
                    .filter_map(|m| {
                        let s = m.exit.expect("exited");
                        (!s.success()).then(|| format!("process {}: {}", m.index, describe(&s)))
                    })
                    .collect();
                // Let the output threads print the last lines.
                std::thread::sleep(Duration::from_millis(100));
                if !failed.is_empty() {
                    return Err(Error::Other(format!(
                        "cluster stopped with failures: {}",
                        failed.join(", ")
                    )));
                }
                let reports = reports.lock().expect("reports").clone();
                return Ok(ClusterReport { restarts, reports });
            }
            Watched::Died(index, status) => {
                restarts += 1;
                // The first death seen may be a process that exited because
                // its peer died: give the others a moment, and report every
                // death, a signal first (the cause, usually).
                std::thread::sleep(Duration::from_millis(300));
                let mut deaths: Vec<(usize, ExitStatus)> = vec![(index, status)];
                for m in &mut members {
                    if m.index != index
                        && let Ok(Some(s)) = m.child.try_wait()
                    {
                        m.exit = Some(s);
                        deaths.push((m.index, s));
                    }
                }
                deaths.sort_by_key(|(_, s)| s.signal().is_none());
                let why: Vec<String> = deaths
                    .iter()
                    .map(|(i, s)| format!("process {i}: {}", describe(s)))
                    .collect();
                tracing::warn!(
                    deaths = %why.join(", "),
                    restart = restarts,
                    "cluster: a process died and timely cannot continue without it; \
                     stopping the others and restarting all from the newest checkpoint"
                );
                for m in &mut members {
                    if m.exit.is_none() {
                        let _ = m.child.kill();
                        let _ = m.child.wait();
                    }
                }
                if restarts > spec.max_restarts {
                    return Err(Error::Other(format!(
                        "cluster: gave up after {} restarts (process {index}: {})",
                        spec.max_restarts,
                        describe(&status)
                    )));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

enum Watched {
    /// Every process exited, and none failed before a stop was asked, or all
    /// succeeded.
    Finished,
    /// This process failed while the job was meant to run.
    Died(usize, ExitStatus),
}

fn watch(spec: &ClusterSpec, members: &mut [Member], stop: &AtomicBool) -> Result<Watched> {
    let mut stopping = false;
    let mut last_status = Instant::now();
    let mut progress = Progress::default();
    loop {
        for m in members.iter_mut().filter(|m| m.exit.is_none()) {
            if let Some(status) = m.child.try_wait().map_err(|e| Error::Other(format!("wait: {e}")))? {
                m.exit = Some(status);
                if !status.success() && !stopping {
                    return Ok(Watched::Died(m.index, status));
                }
                tracing::info!(process = m.index, status = %describe(&status), "cluster: process exited");
            }
        }
        if members.iter().all(|m| m.exit.is_some()) {
            return Ok(Watched::Finished);
        }
        if stop.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            tracing::info!("cluster: stop requested; every process commits and exits");
            for m in members.iter().filter(|m| m.exit.is_none()) {
                signal(m.child.id(), "-TERM");
            }
        }
        if last_status.elapsed() >= spec.status_every {
            last_status = Instant::now();
            eprintln!("{}", status_line(spec, members, &mut progress));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Default)]
struct Progress {
    last: Option<(Instant, i64)>,
}

fn status_line(spec: &ClusterSpec, members: &[Member], progress: &mut Progress) -> String {
    let states: Vec<String> = members
        .iter()
        .map(|m| match m.exit {
            None => format!(
                "p{} running (pid {}, {} s)",
                m.index,
                m.child.id(),
                m.started.elapsed().as_secs()
            ),
            Some(s) => format!("p{} exited ({})", m.index, describe(&s)),
        })
        .collect();
    let job = match ManifestStore::open(spec.store.clone()).latest() {
        Ok(Some(m)) => {
            let next: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
            let age_s = (chrono::Utc::now().timestamp_millis() - m.created_ms) as f64 / 1000.0;
            let rate = match progress.last {
                Some((at, before)) if at.elapsed().as_secs_f64() > 0.0 => {
                    format!(", {:.0} msg/s", (next - before) as f64 / at.elapsed().as_secs_f64())
                }
                _ => String::new(),
            };
            progress.last = Some((Instant::now(), next));
            format!(
                "checkpoint epoch {} ({age_s:.1} s ago, generation {}), {next} messages committed{rate}",
                m.epoch, m.generation
            )
        }
        Ok(None) => "no checkpoint yet".into(),
        Err(e) => format!("checkpoints unreadable: {e}"),
    };
    format!("cluster: {} | {job}", states.join(", "))
}
