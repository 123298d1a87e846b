//! K2 over the broker's SASL_SSL listener (TLS with the project's CA,
//! SCRAM-SHA-512): every client of a job, `k2 produce` included, with the
//! password from a file or the environment; exact tables and transactional
//! alerts by message id; a wrong password refused at once and clearly.

mod common;

use common::arb::*;
use common::job::*;
use common::sasl::*;
use common::*;
use std::time::{Duration, Instant};

/// `market` (bronze + arbitrage, transactional alerts) reads, writes and
/// publishes only over SASL_SSL: the feed arrives in three parts through
/// `k2 produce --config`, around a continuous run stopped by SIGTERM and a
/// bounded one, and the tables and the alerts topic hold exactly what the
/// oracle computes from the topics.
#[test]
fn market_runs_exactly_once_over_sasl_ssl_with_transactional_alerts() {
    let plain = broker();
    let sasl = sasl();
    let topics = topics("sasl");
    let dir = temp_dir("sasl");
    let config = arbitrage_config(&dir, "sasl", &sasl.bootstrap, &topics, "kafka_sink = \"transactional\"");
    let password = sasl.password_file();
    append_config(
        &config,
        &sasl.security_table(&format!("{{ file = \"{}\" }}", password.display())),
    );
    let alerts_topic = format!("{}.alerts", topics.0);
    let start = 1767225600000;
    let part = |i: u64| {
        produce_part_with(
            produce_cmd_with_config(&config, &topics),
            41 + i,
            1500,
            start + i as i64 * 4000,
        )
    };
    let manifests = || std::fs::read_dir(dir.join("checkpoints/sasl/manifests")).map_or(0, |d| d.count());

    part(0);
    let log = dir.join("run0.log");
    let job = spawn_job(&config, "market", 2, &log);
    wait_for("the job to plan", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("source planned"))
    });
    let n = manifests();
    part(1);
    wait_for("a new checkpoint", Duration::from_secs(60), || manifests() > n);
    let first = stop_job(job, &log);
    assert!(first["messages"].as_u64().unwrap() > 0, "{first}");
    part(2);
    let out = ok(k2()
        .args(["run", "market", "--bounded", "-w", "3", "--config"])
        .arg(&config));

    // The oracle reads the same topics (over PLAINTEXT: only K2 is under test).
    let want = oracle(&plain, &topics);
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
    assert_bronze("over SASL_SSL", &dir, &want);
    let (alerts, late) = engine_output(&dir);
    assert_matches("over SASL_SSL", &alerts, &want);
    assert_same_late(&late, &want.late, "over SASL_SSL");

    // The transactional topic, read back over SASL_SSL as a read_committed
    // consumer: every alert exactly once.
    assert_alerts_topic_in(&sasl.kafka_config(), &alerts_topic, &want);

    // The password is in no output of the runs.
    let mut outputs = vec![
        std::fs::read_to_string(&log).unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ];
    outputs.push(first.to_string());
    for text in outputs {
        assert!(!text.contains(sasl.password()), "the SASL password was printed");
    }
    for topic in [&topics.0, &topics.1, &alerts_topic] {
        delete_topic(&plain, topic);
    }
    forget(&password);
}

/// A wrong password (from the environment) stops the job within a few
/// seconds, well inside `kafka.connect_timeout_ms`, with an error that names
/// the broker and the SASL mechanism, and neither password. `k2 produce`
/// says the same.
#[test]
fn a_wrong_password_fails_fast_naming_the_broker_and_the_mechanism() {
    let sasl = sasl();
    let topics = topics("saslbad");
    let dir = temp_dir("saslbad");
    let config = arbitrage_config(&dir, "saslbad", &sasl.bootstrap, &topics, "");
    append_config(&config, &sasl.security_table("{ env = \"K2_TEST_KAFKA_PASSWORD\" }"));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_batch = 256", "poll_batch = 256\nconnect_timeout_ms = 60000");
    std::fs::write(&config, text).unwrap();
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let run = |cmd: &mut std::process::Command| {
        let started = Instant::now();
        let out = cmd.env("K2_TEST_KAFKA_PASSWORD", &wrong).output().unwrap();
        (out, started.elapsed())
    };
    let (job, job_took) = run(k2().args(["run", "market", "--bounded", "--config"]).arg(&config));
    let (produce, produce_took) = run(produce_cmd_with_config(&config, &topics).args(["--count", "10"]));
    for (what, out, took) in [("k2 run", job, job_took), ("k2 produce", produce, produce_took)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what} logged in with a wrong password:\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(30),
            "{what} took {took:?} to fail:\n{stderr}"
        );
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        for needle in [
            sasl.bootstrap.as_str(),
            sasl.mechanism.as_str(),
            "SASL_SSL",
            "[kafka.security]",
        ] {
            assert!(
                error.contains(needle),
                "{what}: the error does not name {needle}: {error}"
            );
        }
        assert!(error.contains("authentication") || error.contains("login"), "{error}");
        for secret in [wrong.as_str(), sasl.password()] {
            assert!(!stderr.contains(secret), "{what} printed a password:\n{stderr}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
        }
    }
}

/// Every topic K2 creates has `kafka.replication_factor` replicas: on the
/// single test broker a factor of 2 cannot be met, and both the alerts
/// topic (`k2 run market`) and the feed topics (`k2 produce`) are refused
/// for it, over SASL_SSL as over PLAINTEXT.
#[test]
fn topics_k2_creates_take_the_configured_replication_factor() {
    let sasl = sasl();
    let topics = topics("replicas");
    let dir = temp_dir("replicas");
    let config = arbitrage_config(&dir, "replicas", &sasl.bootstrap, &topics, "");
    let password = sasl.password_file();
    append_config(
        &config,
        &sasl.security_table(&format!("{{ file = \"{}\" }}", password.display())),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_batch = 256", "poll_batch = 256\nreplication_factor = 2");
    std::fs::write(&config, text).unwrap();
    let job = k2()
        .args(["run", "market", "--bounded", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let produce = produce_cmd_with_config(&config, &topics)
        .args(["--count", "10"])
        .output()
        .unwrap();
    for (what, out, topic) in [
        ("k2 run", job, format!("{}.alerts", topics.0)),
        ("k2 produce", produce, topics.0.clone()),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what} created a topic with 2 replicas on 1 broker:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("create topic `{topic}`")) && stderr.contains("kafka.replication_factor = 2"),
            "{what}: {stderr}"
        );
    }
    forget(&password);
}
