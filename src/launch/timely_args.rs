//! Timely's cluster flags, parsed by the application.
//!
//! `timely::execute_from_args` rejects flags it does not know, so K2 parses
//! `-w/-n/-p/-h` itself (with clap, alongside its own flags) and builds
//! `timely::Config` here.

use crate::error::{Error, Result};
use std::path::PathBuf;
use timely::CommunicationConfig;

/// Worker threads and processes.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct TimelyArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster, 0-based.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Hostfile: one `host:port` per line, one line per process.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

impl Default for TimelyArgs {
    fn default() -> Self {
        TimelyArgs {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

impl TimelyArgs {
    /// Workers over the whole cluster.
    pub fn total_workers(&self) -> usize {
        self.workers * self.processes
    }

    /// The address of every process: the hostfile's lines, or loopback ports
    /// 2101, 2102, … without one.
    pub fn addresses(&self) -> Result<Vec<String>> {
        let Some(path) = &self.hostfile else {
            return Ok((0..self.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect());
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read hostfile", path, e))?;
        let hosts: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if hosts.len() != self.processes {
            return Err(Error::config(
                "-h",
                format!(
                    "{} lists {} hosts for {} processes",
                    path.display(),
                    hosts.len(),
                    self.processes
                ),
            ));
        }
        Ok(hosts)
    }

    /// The timely configuration these flags describe.
    pub fn to_config(&self) -> Result<timely::Config> {
        if self.workers == 0 {
            return Err(Error::config("-w", "needs at least one worker"));
        }
        if self.processes == 0 || self.process >= self.processes {
            return Err(Error::config(
                "-p",
                format!("process {} is not in 0..{}", self.process, self.processes),
            ));
        }
        let communication = if self.processes == 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cluster_flags_are_clear_errors() {
        let args = |processes, process, hostfile: Option<PathBuf>| TimelyArgs {
            workers: 2,
            processes,
            process,
            hostfile,
        };
        let err = args(2, 2, None).to_config().err().unwrap().to_string();
        assert!(err.contains("process 2 is not in 0..2"), "{err}");

        let dir = std::env::temp_dir().join(format!("k2-hosts-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "# two hosts\n10.0.0.1:2101\n\n10.0.0.2:2101\n").unwrap();
        assert_eq!(
            args(2, 1, Some(hosts.clone())).addresses().unwrap(),
            vec!["10.0.0.1:2101", "10.0.0.2:2101"]
        );
        let err = args(3, 0, Some(hosts)).to_config().err().unwrap().to_string();
        assert!(err.contains("lists 2 hosts for 3 processes"), "{err}");
        let err = args(2, 0, Some(dir.join("missing")))
            .to_config()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
