//! Observability against the real broker: the Prometheus endpoint of a
//! running job, scraped over HTTP; the consumer group's offsets; JSON logs
//! and the progress line.

mod common;

use common::job::*;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One scrape: every sample, by its series (`name{labels}`, labels as written).
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// GET the endpoint; `None` while nothing listens.
    fn get(port: u16) -> Option<Scrape> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        // HTTP/1.0: the answer is the body up to the close, never chunked.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
        Some(Scrape(body.lines().filter_map(parse_sample).collect()))
    }

    /// The samples of `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
    }

    /// The one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self.samples(name, labels).map(|(_, _, v)| *v).collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {} series", found.len());
        found.first().copied()
    }
}

/// `name{k="v",...} value` (label values here hold no `"` or `,`).
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            (name.to_string(), labels)
        }
        None => (series.to_string(), BTreeMap::new()),
    };
    Some((name, labels, value))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The group's committed offsets of `partitions` (absent: none committed).
fn group_offsets(brokers: &str, group: &str, partitions: &[(String, i32)]) -> BTreeMap<(String, i32), i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

fn manifest_offsets(m: &k2::checkpoint::Manifest) -> BTreeMap<(String, i32), i64> {
    m.offsets
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| ((t.clone(), *p), *o)))
        .collect()
}

#[test]
fn a_running_job_serves_metrics_and_commits_its_group_offsets() {
    let brokers = broker();
    let topics = topics("metrics");
    let dir = temp_dir("metrics");
    let job = format!("metrics-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let group = format!("k2-{job}");
    create_feed_topics(&brokers, &topics);
    let config = bronze_config(&dir, &job, &brokers, &topics, "");
    let port = free_port();
    let log = dir.join("job.log");
    let running = spawn_job_with(
        &config,
        "bronze",
        2,
        &log,
        &[
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
            "--progress",
            "always",
            "--progress-every",
            "1",
        ],
    );
    let source = [("operator", "source")];
    let labels = [("k2_job", job.as_str()), ("process", "0")];
    let mut first = None;
    wait_for("the metrics endpoint", Duration::from_secs(120), || {
        first = Scrape::get(port).filter(|s| s.value("k2_records_in_total", &source).is_some());
        first.is_some()
    });
    let first = first.unwrap();
    assert_eq!(
        first.value("k2_records_in_total", &source),
        Some(0.0),
        "nothing produced yet"
    );
    assert!(
        first.samples("k2_build_info", &labels).count() == 1,
        "every series is labelled with the job and process"
    );

    // The input arrives while the job runs.
    let truth = produce(&dir, &brokers, &topics, 1500, 5);
    let exp = expected(&read_truth(&truth));
    let messages: i64 = exp.ends.values().sum();
    let mut last = None;
    wait_for(
        "the counters to reach the input, the lag to fall to 0, a watermark",
        Duration::from_secs(120),
        || {
            let Some(s) = Scrape::get(port) else { return false };
            let read = s.value("k2_records_in_total", &source) == Some(messages as f64);
            let lags: Vec<f64> = s.samples("k2_consumer_lag_messages", &[]).map(|(_, _, v)| *v).collect();
            let caught_up = lags.len() == 8 && lags.iter().all(|l| *l == 0.0);
            let committed = s.value("k2_checkpoint_epoch", &[]).is_some();
            // Known once every partition showed a trade or went idle.
            let watermark = s.value("k2_event_time_watermark_seconds", &[]).is_some();
            let done = read && caught_up && committed && watermark;
            last = Some(s);
            done
        },
    );
    let s = last.unwrap();
    // Every partition's end is the broker's, and the job's position is there.
    for ((topic, partition), end) in &exp.ends {
        let at = [("topic", topic.as_str()), ("partition", &partition.to_string())];
        assert_eq!(
            s.value("k2_consumer_end_offset", &at),
            Some(*end as f64),
            "{topic}/{partition}"
        );
        assert_eq!(
            s.value("k2_consumer_position", &at),
            Some(*end as f64),
            "{topic}/{partition}"
        );
    }
    let malformed = exp.malformed.len() as f64;
    assert_eq!(s.value("k2_records_dead_lettered_total", &source), Some(malformed));
    let dedup = [("operator", "dedup")];
    let trades = s.value("k2_records_out_total", &source).unwrap();
    assert_eq!(
        s.value("k2_records_in_total", &dedup),
        Some(trades),
        "dedup reads the source's trades"
    );
    let duplicates = s.value("k2_records_duplicate_total", &dedup).unwrap();
    assert!(duplicates > 0.0, "the feed's duplicates are counted");
    assert_eq!(s.value("k2_records_out_total", &dedup), Some(trades - duplicates));
    assert!(s.value("k2_commit_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert!(s.value("k2_checkpoint_age_seconds", &[]).unwrap() >= 0.0);
    assert!(s.value("k2_checkpoint_state_bytes", &[]).unwrap() > 0.0);
    assert!(s.value("k2_process_resident_memory_bytes", &[]).unwrap() > 0.0);
    let watermark = s.value("k2_event_time_watermark_seconds", &[]).unwrap();
    assert!(watermark > 1.7e9, "a watermark in Unix seconds: {watermark}");
    assert!(s.value("k2_event_time_lag_seconds", &[]).unwrap() >= 0.0);

    // Kafka's view: the group holds the newest checkpoint's offsets.
    let manifest = wait_for_offsets(&dir, &job, &exp.ends, 60);
    let want = manifest_offsets(&manifest);
    assert_eq!(want.len(), 8, "every partition is in the checkpoint: {want:?}");
    for (partition, end) in &exp.ends {
        assert_eq!(
            want[partition], *end,
            "the newest checkpoint is at the end of the input"
        );
    }
    let partitions: Vec<(String, i32)> = want.keys().cloned().collect();
    wait_for(
        "the group's offsets to equal the checkpoint's",
        Duration::from_secs(30),
        || group_offsets(&brokers, &group, &partitions) == want,
    );
    let scraped = Scrape::get(port).unwrap();
    assert!(
        scraped
            .value("k2_group_offset_commits_total", &[("result", "ok")])
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        scraped.value("k2_group_offset_commits_total", &[("result", "error")]),
        None
    );

    // A clean stop commits a final cut; the group follows it before exit.
    let report = stop_job(running, &log);
    assert_eq!(report["messages"].as_i64(), Some(messages));
    let last_manifest = latest_manifest(&dir, &job).unwrap();
    assert_eq!(
        group_offsets(&brokers, &group, &partitions),
        manifest_offsets(&last_manifest)
    );

    // --log-format json: every line of the log is a JSON object, progress
    // lines included.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let progress: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "k2::progress").collect();
    assert!(!progress.is_empty(), "progress lines:\n{text}");
    assert!(
        progress.iter().any(|p| p["msg_per_s"].as_u64().is_some_and(|r| r > 0)),
        "a progress line saw messages:\n{text}"
    );
    assert!(progress.iter().all(|p| p["lag"].is_i64() || p["lag"].is_null()));

    delete_topic(&brokers, &topics.0);
    delete_topic(&brokers, &topics.1);
    delete_group(&brokers, &group);
}

fn delete_group(brokers: &str, group: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rt.block_on(admin.delete_groups(&[group], &AdminOptions::new()));
}
