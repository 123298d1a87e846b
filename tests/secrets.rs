//! Secrets appear in no output: k2 runs with the SASL password in a file
//! and in an environment variable, a catalog URI with a password and a
//! credential in the librdkafka passthrough, succeeds once and fails in
//! several ways (a bad catalog URI, a wrong password, an unreachable broker,
//! a refused passthrough property); no password is in any stdout, stderr,
//! run report, `k2 checkpoints` output or file the job wrote.

mod common;

use common::job::*;
use common::sasl::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the runs printed, by run, to search for secrets.
struct Printed(Vec<(String, String)>);

impl Printed {
    fn add(&mut self, what: &str, out: &Output) {
        let text = format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.push((what.to_string(), text));
    }

    /// Runs `cmd`, which must fail, and keeps its output; returns its stderr.
    fn fails(&mut self, what: &str, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{what} succeeded");
        self.add(what, &out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A bronze job config over SASL_SSL in its own folder `dir/job`: the
/// password written as `password` (TOML), `kafka_extra` in `[kafka]`,
/// `iceberg_extra` in `[iceberg]`.
fn config(
    dir: &Path,
    job: &str,
    brokers: &str,
    sasl: &Sasl,
    password: &str,
    kafka_extra: &str,
    iceberg_extra: &str,
) -> PathBuf {
    let dir = dir.join(job);
    std::fs::create_dir_all(&dir).unwrap();
    let (binance, kraken) = job_topics(job);
    let path = dir.join(format!("{job}.toml"));
    let text = format!(
        r#"
[job]
name = "{job}"
epoch_ms = 100
commit_interval_ms = 300

[kafka]
brokers = "{brokers}"
connect_timeout_ms = 3000
topics = {{ binance = "{binance}", kraken = "{kraken}" }}
{kafka_extra}

[iceberg]
warehouse = "{}"
{iceberg_extra}

[checkpoint]
dir = "{}"
{}"#,
        dir.join("warehouse").display(),
        dir.join("checkpoints").display(),
        sasl.security_table(password)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The feed topics of job `job` of this test run.
fn job_topics(job: &str) -> (String, String) {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    (
        format!("test.secrets.{run}.{job}.binance"),
        format!("test.secrets.{run}.{job}.kraken"),
    )
}

#[test]
fn no_secret_is_printed_when_runs_succeed_or_fail() {
    let plain = broker();
    let sasl = sasl();
    let dir = temp_dir("secrets");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let catalog_password = format!("catalog-{id}");
    let wrong_password = format!("wrong-{id}");
    let passthrough_secret = format!("passthrough-{id}");
    let secrets = [
        sasl.password(),
        catalog_password.as_str(),
        wrong_password.as_str(),
        passthrough_secret.as_str(),
    ];
    let password_file = sasl.password_file();
    let from_file = format!("{{ file = \"{}\" }}", password_file.display());
    let from_env = "{ env = \"K2_TEST_KAFKA_PASSWORD\" }";
    let wrong_file = temp_dir("secret").join("wrong");
    std::fs::write(&wrong_file, &wrong_password).unwrap();
    let passthrough = format!("client = {{ \"ssl.key.password\" = \"{passthrough_secret}\" }}");
    let k2_env = |cmd: &mut Command| {
        cmd.env("K2_TEST_KAFKA_PASSWORD", sasl.password());
    };
    let mut printed = Printed(Vec::new());

    // 1. Success: produce, run and list checkpoints over SASL_SSL, the
    //    password from a file, a credential in the passthrough.
    let good = config(&dir, "good", &sasl.bootstrap, &sasl, &from_file, &passthrough, "");
    let topics = job_topics("good");
    let out = ok(produce_cmd_with_config(&good, &topics).args(["--count", "300", "--rate", "0"]));
    printed.add("k2 produce", &out);
    let out = ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&good));
    printed.add("k2 run (its report)", &out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["trades"].as_u64().unwrap() > 0, "{report}");
    for args in [
        &["checkpoints", "good", "--config"][..],
        &["checkpoints", "good", "--json", "--config"],
    ] {
        let out = ok(k2().args(args).arg(&good));
        printed.add("k2 checkpoints", &out);
    }

    // 2. A catalog URI with a password (the Kafka password from the
    //    environment): opening the catalog fails and is retried; its
    //    messages show the URI without credentials.
    let uri = format!("postgres://k2:{catalog_password}@127.0.0.1:1/catalog?password={catalog_password}");
    let bad_catalog = config(
        &dir,
        "catalog",
        &sasl.bootstrap,
        &sasl,
        from_env,
        "",
        &format!("catalog_uri = \"{uri}\""),
    );
    let log = dir.join("catalog.log");
    let mut cmd = k2();
    cmd.args(["run", "bronze", "--config"])
        .arg(&bad_catalog)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    k2_env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("opening the catalog failed")
    {
        assert!(Instant::now() < limit, "no catalog error within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // It retries for minutes: its first messages are enough.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("postgres://***@127.0.0.1:1/catalog?password=***"),
        "{stderr}"
    );
    printed.0.push(("k2 run with a bad catalog URI".into(), stderr));
    printed.add("k2 run with a bad catalog URI", &out);

    // 3. A wrong password from a file: the job and `k2 produce` fail at once.
    let wrong = config(
        &dir,
        "wrong",
        &sasl.bootstrap,
        &sasl,
        &format!("{{ file = \"{}\" }}", wrong_file.display()),
        &passthrough,
        "",
    );
    let stderr = printed.fails(
        "k2 run with a wrong password",
        k2().args(["run", "bronze", "--config"]).arg(&wrong),
    );
    assert!(stderr.contains("the login failed"), "{stderr}");
    printed.fails(
        "k2 produce with a wrong password",
        &mut produce_cmd_with_config(&wrong, &job_topics("wrong")),
    );

    // 4. An unreachable broker (the password from the environment): the
    //    wait ends after kafka.connect_timeout_ms.
    let unreachable = config(&dir, "unreachable", "127.0.0.1:1", &sasl, from_env, "", "");
    let mut cmd = k2();
    cmd.args(["run", "bronze", "--config"]).arg(&unreachable);
    k2_env(&mut cmd);
    let stderr = printed.fails("k2 run with an unreachable broker", &mut cmd);
    assert!(stderr.contains("within kafka.connect_timeout_ms = 3000 ms"), "{stderr}");
    let mut cmd = produce_cmd_with_config(&unreachable, &job_topics("unreachable"));
    k2_env(&mut cmd);
    printed.fails("k2 produce with an unreachable broker", &mut cmd);

    // 5. A credential in a passthrough property librdkafka refuses: its
    //    config error would repeat the value.
    let refused = config(
        &dir,
        "refused",
        &sasl.bootstrap,
        &sasl,
        &from_file,
        &format!("client = {{ \"sasl.oauthbearer.client.secret\" = \"{passthrough_secret}\" }}"),
        "",
    );
    let stderr = printed.fails(
        "k2 produce with a refused property",
        &mut produce_cmd_with_config(&refused, &job_topics("refused")),
    );
    assert!(stderr.contains("sasl.oauthbearer.client.secret ***"), "{stderr}");

    // No secret anywhere: not in what was printed, nor in any file the jobs
    // wrote (checkpoints, manifests, table metadata, logs, configs aside).
    for (what, text) in &printed.0 {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} printed a secret:\n{text}");
        }
    }
    for file in files(&dir) {
        if file.extension().is_some_and(|e| e == "toml") {
            continue; // the configs hold the catalog URI and passthrough as written
        }
        let bytes = std::fs::read(&file).unwrap();
        for secret in secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} holds a secret", file.display());
        }
    }
    for topic in [&topics.0, &topics.1] {
        delete_topic(&plain, topic);
    }
    forget(&password_file);
    forget(&wrong_file);
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
