//! The pre-flight handshake of a multi-process job.
//!
//! Before timely connects its processes, process 0 (the leader) takes the
//! job's lock and generation, recovers from the newest checkpoint and plans
//! the Kafka partitions. Every other process (a follower) then connects to the
//! leader's cluster address, says who it is and what it runs (a
//! [`Fingerprint`]: dataflow, layout, the whole effective config), and gets
//! back either an [`Agreement`] (the leader's partition plan, generation and
//! checkpoint) or a clear error naming what differs. Then all close the
//! handshake and start timely on the same addresses.
//!
//! So every process starts from the same checkpoint and the same partition
//! list, and a process started with another config or dataflow refuses
//! before any record is read. The check must happen before timely starts: a
//! process with another `-w` would route records to workers that do not exist.
//!
//! The wire format is one JSON line each way.

use crate::error::{Error, Result};
use crate::source::kafka::SourcePlan;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// What a process runs; all processes of a job must agree on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The dataflow's name.
    pub dataflow: String,
    /// Processes in the cluster (`-n`).
    pub processes: usize,
    /// Worker threads per process (`-w`).
    pub workers: usize,
    /// The K2 version.
    pub version: String,
    /// The effective config (file plus environment overrides), as a digest
    /// per dotted key: differences can be named, and no value, secret or
    /// not, crosses the wire.
    pub config: std::collections::BTreeMap<String, String>,
}

impl Fingerprint {
    /// Why `other` (of process `process`) differs from this one, if it does.
    pub fn mismatch(&self, other: &Fingerprint, process: usize) -> Option<String> {
        let mut diffs = Vec::new();
        if self.dataflow != other.dataflow {
            diffs.push(format!(
                "dataflow `{}` (process 0 runs `{}`)",
                other.dataflow, self.dataflow
            ));
        }
        if self.processes != other.processes {
            diffs.push(format!("-n {} (process 0: -n {})", other.processes, self.processes));
        }
        if self.workers != other.workers {
            diffs.push(format!("-w {} (process 0: -w {})", other.workers, self.workers));
        }
        if self.version != other.version {
            diffs.push(format!("k2 {} (process 0: k2 {})", other.version, self.version));
        }
        let all: std::collections::BTreeSet<&String> = self.config.keys().chain(other.config.keys()).collect();
        let keys: Vec<String> = all
            .into_iter()
            .filter(|k| self.config.get(*k) != other.config.get(*k))
            .map(|k| format!("`{k}`"))
            .collect();
        if !keys.is_empty() {
            diffs.push(format!("config keys {}", keys.join(", ")));
        }
        (!diffs.is_empty()).then(|| format!("process {process} differs from process 0: {}", diffs.join("; ")))
    }
}

impl Fingerprint {
    /// The digest of a config as JSON: one FNV-1a hash per leaf, by dotted key.
    pub fn digest(config: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
        fn walk(path: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(&p, v, out);
                    }
                }
                leaf => {
                    let h = crate::hash::fnv1a(leaf.to_string().as_bytes());
                    out.insert(path.to_string(), format!("{h:016x}"));
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk("", config, &mut out);
        out
    }
}

/// What the leader hands to every follower.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// The job's generation, taken by the leader.
    pub generation: u64,
    /// The epoch of the checkpoint the job resumes from (read it from the
    /// shared checkpoint folder), if any.
    pub checkpoint_epoch: Option<u64>,
    /// The Kafka partitions with their start (and, bounded, end) offsets.
    pub plan: SourcePlan,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    process: usize,
    fingerprint: Fingerprint,
}

#[derive(Serialize, Deserialize)]
enum Answer {
    Agreed(Agreement),
    Refused(String),
}

fn send<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

fn receive<T: for<'de> Deserialize<'de>>(stream: &TcpStream) -> std::io::Result<T> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the handshake",
        ));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The leader's side: waits (up to `timeout`) for every follower's hello on
/// `address`, checks their fingerprints and answers each. Fails if any
/// follower differs (after telling all of them why) or does not come.
pub fn lead(
    address: &str,
    processes: usize,
    mine: &Fingerprint,
    agreement: &Agreement,
    timeout: Duration,
) -> Result<()> {
    let listener = TcpListener::bind(address).map_err(|e| Error::Other(format!("handshake: bind {address}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Other(format!("handshake: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut followers: Vec<(usize, TcpStream, Fingerprint)> = Vec::new();
    while followers.len() + 1 < processes {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|_| stream.set_read_timeout(Some(Duration::from_secs(10))))
                    .map_err(|e| Error::Other(format!("handshake: {e}")))?;
                // A stray connection (a port scan, a stale process) is not a follower.
                match receive::<Hello>(&stream) {
                    Ok(h) if h.process > 0 && !followers.iter().any(|(p, _, _)| *p == h.process) => {
                        tracing::info!(process = h.process, "handshake: follower connected");
                        followers.push((h.process, stream, h.fingerprint));
                    }
                    Ok(h) => tracing::warn!(process = h.process, "handshake: ignoring a second hello"),
                    Err(e) => tracing::warn!(error = %e, "handshake: ignoring a connection without a hello"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = (1..processes)
                        .filter(|p| !followers.iter().any(|(q, _, _)| q == p))
                        .collect();
                    return Err(Error::Other(format!(
                        "handshake: processes {missing:?} did not connect to {address} within {} s",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::Other(format!("handshake: accept on {address}: {e}"))),
        }
    }
    let problems: Vec<String> = followers.iter().filter_map(|(p, _, f)| mine.mismatch(f, *p)).collect();
    let answer = if problems.is_empty() {
        Answer::Agreed(agreement.clone())
    } else {
        Answer::Refused(problems.join("\n"))
    };
    for (p, stream, _) in &mut followers {
        if let Err(e) = send(stream, &answer) {
            tracing::warn!(process = *p, error = %e, "handshake: could not answer");
        }
    }
    match answer {
        Answer::Agreed(_) => Ok(()),
        Answer::Refused(why) => Err(Error::config("cluster", why)),
    }
}

/// A follower's side: connects to the leader at `address` (retrying until
/// `timeout`, since the leader may still be recovering), sends its hello and
/// returns the leader's agreement or its refusal as an error.
pub fn follow(address: &str, process: usize, mine: &Fingerprint, timeout: Duration) -> Result<Agreement> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect(address) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(Error::Other(format!(
                    "handshake: process 0 did not answer at {address} within {} s: {e}",
                    timeout.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let io = |e: std::io::Error| Error::Other(format!("handshake with process 0 at {address}: {e}"));
    send(
        &mut stream,
        &Hello {
            process,
            fingerprint: mine.clone(),
        },
    )
    .map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    match receive::<Answer>(&stream).map_err(io)? {
        Answer::Agreed(a) => Ok(a),
        Answer::Refused(why) => Err(Error::config("cluster", why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(workers: usize, brokers: &str) -> Fingerprint {
        Fingerprint {
            dataflow: "bronze".into(),
            processes: 2,
            workers,
            version: "0.1.0".into(),
            config: Fingerprint::digest(
                &serde_json::json!({"kafka": {"brokers": brokers, "poll_batch": 10, "client": {"sasl.password": "s3cret"}}, "job": {"name": "j"}}),
            ),
        }
    }

    fn free_address() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[test]
    fn mismatches_name_what_differs() {
        let a = fingerprint(2, "b:9092");
        assert_eq!(a.mismatch(&a.clone(), 1), None);
        let why = a.mismatch(&fingerprint(3, "c:9092"), 1).unwrap();
        assert!(why.contains("process 1"), "{why}");
        assert!(why.contains("-w 3 (process 0: -w 2)"), "{why}");
        assert!(why.contains("`kafka.brokers`"), "{why}");
        assert!(!why.contains("poll_batch"), "{why}");
        // No value crosses the wire: not the brokers, not a password.
        let wire = serde_json::to_string(&a).unwrap();
        assert!(!wire.contains("b:9092") && !wire.contains("s3cret"), "{wire}");
    }

    #[test]
    fn the_handshake_carries_nothing_of_a_secret() {
        let config = |password: &str| {
            let text = format!(
                "[kafka]\nclient = {{ \"ssl.key.password\" = \"{password}\" }}\n[kafka.security]\nprotocol = \"SASL_PLAINTEXT\"\n\
                 sasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"k2\"\npassword = \"{password}\"\n\
                 [iceberg]\ncatalog_uri = \"postgres://k2:{password}@db/cat\"\n"
            );
            crate::config::Config::from_toml_with_env(&text, []).unwrap()
        };
        let (a, b) = (config("hunter2"), config("swordfish"));
        // Not even a digest of a secret: it could be brute-forced.
        assert_eq!(Fingerprint::digest(&a.effective()), Fingerprint::digest(&b.effective()));
        let wire = serde_json::to_string(&Fingerprint::digest(&a.effective())).unwrap();
        assert!(
            wire.contains("kafka.security.password") && !wire.contains("hunter2"),
            "{wire}"
        );
    }

    #[test]
    fn followers_get_the_agreement_or_the_reason() {
        let agreement = Agreement {
            generation: 7,
            checkpoint_epoch: Some(42),
            plan: SourcePlan::default(),
        };
        // Agreeing processes.
        let address = free_address();
        let leader_fp = fingerprint(2, "b:9092");
        let (addr, fp, ag) = (address.clone(), leader_fp.clone(), agreement.clone());
        let leader = std::thread::spawn(move || lead(&addr, 2, &fp, &ag, Duration::from_secs(10)));
        let got = follow(&address, 1, &leader_fp, Duration::from_secs(10)).unwrap();
        assert_eq!(got, agreement);
        leader.join().unwrap().unwrap();

        // A follower with another config: both sides fail, saying why.
        let address = free_address();
        let (addr, fp, ag) = (address.clone(), leader_fp.clone(), agreement.clone());
        let leader = std::thread::spawn(move || lead(&addr, 2, &fp, &ag, Duration::from_secs(10)));
        let err = follow(&address, 1, &fingerprint(2, "other:9092"), Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kafka.brokers`"), "{err}");
        let err = leader.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("process 1 differs"), "{err}");
    }

    #[test]
    fn a_missing_follower_is_an_error_not_a_hang() {
        let agreement = Agreement {
            generation: 1,
            checkpoint_epoch: None,
            plan: SourcePlan::default(),
        };
        let err = lead(
            &free_address(),
            3,
            &fingerprint(1, "b"),
            &agreement,
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("processes [1, 2] did not connect"), "{err}");
    }
}
