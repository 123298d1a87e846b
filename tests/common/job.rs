//! Running jobs in the background, raw messages, and waiting for commits.

use super::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `k2 run`; killed if the test fails before stopping it.
pub struct Job(pub Option<Child>);

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Job {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("a running job").id()
    }
}

/// Starts `k2 run <dataflow>` (continuous) with its stderr in `log` and
/// its stdout (the run report) piped.
pub fn spawn_job(config: &Path, dataflow: &str, workers: usize, log: &Path) -> Job {
    spawn_job_with(config, dataflow, workers, log, &[])
}

/// [`spawn_job`] with more `k2 run` arguments.
pub fn spawn_job_with(config: &Path, dataflow: &str, workers: usize, log: &Path, args: &[&str]) -> Job {
    let child = k2()
        .args(["run", dataflow, "-w", &workers.to_string(), "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Job(Some(child))
}

/// SIGTERM, then the run report the job prints on its clean exit.
pub fn stop_job(mut job: Job, log: &Path) -> Value {
    let child = job.0.take().expect("a running job");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(out.status.success(), "SIGTERM exits cleanly:\n{log}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("run report: {e}\n{log}"))
}

/// The job's newest manifest, if any.
pub fn latest_manifest(dir: &Path, job: &str) -> Option<k2::checkpoint::Manifest> {
    let job_dir = dir.join("checkpoints").join(job);
    if !job_dir.exists() {
        return None;
    }
    let store = std::sync::Arc::new(k2::checkpoint::store::LocalStore::new(&job_dir));
    k2::checkpoint::ManifestStore::open(store).latest().unwrap()
}

/// Waits (up to `secs`) for a manifest whose offsets reach `ends`; returns it.
pub fn wait_for_offsets(
    dir: &Path,
    job: &str,
    ends: &BTreeMap<(String, i32), i64>,
    secs: u64,
) -> k2::checkpoint::Manifest {
    let limit = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = latest_manifest(dir, job)
            && ends
                .iter()
                .all(|((t, p), end)| m.offsets.get(t).and_then(|ps| ps.get(p)).copied().unwrap_or(0) >= *end)
        {
            return m;
        }
        assert!(Instant::now() < limit, "no checkpoint reached {ends:?} within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `done` every 100 ms for up to `limit`; panics naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Creates `topic` with `partitions` partitions (it must not exist).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res =
        block_on(admin(brokers).create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts))
            .expect("create topic");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Grows `topic` to `partitions` partitions.
pub fn add_partitions(brokers: &str, topic: &str, partitions: usize) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = block_on(admin(brokers).create_partitions(&[NewPartitions::new(topic, partitions)], &opts))
        .expect("create partitions");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("add partitions to {t}: {e}"));
    }
}

/// Deletes `topic` and waits until the broker no longer lists it.
pub fn delete_topic(brokers: &str, topic: &str) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = block_on(admin(brokers).delete_topics(&[topic], &opts)).expect("delete topic");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("delete topic {t}: {e}"));
    }
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    wait_for(&format!("topic {topic} to be gone"), Duration::from_secs(30), || {
        use rdkafka::consumer::Consumer;
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| {
                m.topics()
                    .iter()
                    .all(|t| t.error().is_some() || t.partitions().is_empty())
            })
            .unwrap_or(false)
    });
}

/// Sends `payloads` to `topic`/`partition` with `key`, in order, and waits
/// until they are all acknowledged.
pub fn send(brokers: &str, topic: &str, partition: i32, key: &str, payloads: &[String]) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for p in payloads {
        let mut record = BaseRecord::to(topic).partition(partition).key(key).payload(p);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A Binance `trade` event.
pub fn binance_trade(symbol: &str, id: u64, price: &str, qty: &str, time_ms: i64) -> String {
    format!(
        r#"{{"e":"trade","E":{time_ms},"s":"{symbol}","t":{id},"p":"{price}","q":"{qty}","T":{time_ms},"m":false,"M":true}}"#
    )
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Appends `text` to the config file `config`.
pub fn append_config(config: &Path, text: &str) {
    let mut s = std::fs::read_to_string(config).unwrap();
    s.push_str(text);
    std::fs::write(config, s).unwrap();
}

/// Creates both feed topics (4 partitions each) before a job starts: a job
/// refuses topics that do not exist.
pub fn create_feed_topics(brokers: &str, topics: &(String, String)) {
    ok(produce_cmd(brokers, topics).args(["--count", "0", "--quiet"]));
}

/// Starts a background producer at `rate` msg/s for `secs` seconds, with 5 %
/// duplicates and 2 % malformed messages, its truth in `dir/truth.jsonl`.
pub fn start_producer(brokers: &str, topics: &(String, String), dir: &Path, rate: u64, secs: u64, seed: u64) -> Child {
    produce_cmd(brokers, topics)
        .args(["--rate", &rate.to_string(), "--duration", &format!("{secs}s")])
        .args(mixed_feed(seed))
        .args(["--quiet", "--truth"])
        .arg(dir.join("truth.jsonl"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("producer.log")).unwrap())
        .spawn()
        .expect("spawn producer")
}

/// A hostfile's text for `n` processes on free loopback ports.
pub fn loopback_hosts(n: usize) -> String {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}\n", l.local_addr().unwrap().port()))
        .collect()
}
