//! The production-path services (the S3 store and the Iceberg REST catalog)
//! and the catalogs a test's tables are in, for K2 and for pyiceberg.
//!
//! The services are found where `scripts/s3.sh` and `scripts/iceberg-rest.sh`
//! start them: their default ports, or the `K2_S3_PORT`, `K2_S3_BUCKET`,
//! `K2_REST_PORT` and `K2_REST_WAREHOUSE` overrides those scripts document.
//! A test that needs one starts it with its script if none runs (the first
//! start on a machine builds SeaweedFS); one that still finds it down fails,
//! saying why: nothing is skipped.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The S3 access key id the tests give K2 and pyiceberg (the local store
/// accepts any key).
pub const S3_KEY_ID: &str = "k2-test";

/// The S3 secret the tests give. Distinctive, so that a test can assert it
/// never appears in K2's output.
pub const S3_SECRET: &str = "k2-test-secret-0f9c1d";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The S3 endpoint of `scripts/s3.sh`.
pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{}", env_or("K2_S3_PORT", "8333"))
}

/// The bucket `scripts/s3.sh start` creates.
pub fn s3_bucket() -> String {
    env_or("K2_S3_BUCKET", "k2-warehouse")
}

/// The base URI of `scripts/iceberg-rest.sh`'s catalog.
pub fn rest_uri() -> String {
    format!("http://127.0.0.1:{}", env_or("K2_REST_PORT", "8182"))
}

/// The warehouse of `scripts/iceberg-rest.sh`'s catalog.
pub fn rest_warehouse() -> String {
    env_or("K2_REST_WAREHOUSE", &format!("s3://{}/rest", s3_bucket()))
}

/// The status code of a plain HTTP request to `127.0.0.1:port`, if anything
/// answers.
fn http_status(port: &str, method: &str, path: &str) -> Option<u16> {
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `script` once per test process (idempotent: a running service is
/// left alone), as [`super::broker`] starts the broker.
fn start_once(script: &'static str, started: &'static std::sync::OnceLock<()>) {
    started.get_or_init(|| {
        super::run_script(script, &["start"]);
    });
}

/// Starts the S3 store if none runs (`scripts/s3.sh start`); panics, saying
/// what is wrong, unless it answers and has its bucket; returns the endpoint.
pub fn require_s3() -> String {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    start_once("scripts/s3.sh", &STARTED);
    let port = env_or("K2_S3_PORT", "8333");
    let bucket = s3_bucket();
    match http_status(&port, "HEAD", &format!("/{bucket}")) {
        Some(200) => s3_endpoint(),
        Some(code) => panic!(
            "the S3 store on {} answers HEAD /{bucket} with HTTP {code}: the bucket is missing. \
             `scripts/s3.sh start` creates it (.ci/run starts the services)",
            s3_endpoint()
        ),
        None => panic!(
            "no S3 store answers on {}: start it with `scripts/s3.sh start` (.ci/run starts the services; \
             K2_S3_PORT overrides the port)",
            s3_endpoint()
        ),
    }
}

/// Starts the REST catalog (and the S3 store behind it) if none runs
/// (`scripts/iceberg-rest.sh start`); panics, saying what is wrong, unless
/// it answers; returns the catalog's URI.
pub fn require_rest() -> String {
    require_s3();
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    start_once("scripts/iceberg-rest.sh", &STARTED);
    let port = env_or("K2_REST_PORT", "8182");
    match http_status(&port, "GET", "/v1/config") {
        Some(200) => rest_uri(),
        other => panic!(
            "the Iceberg REST catalog does not answer GET {}/v1/config ({}): start it with \
             `scripts/iceberg-rest.sh start` (.ci/run starts the services; K2_REST_PORT overrides the port)",
            rest_uri(),
            other.map_or("no connection".to_string(), |c| format!("HTTP {c}"))
        ),
    }
}

/// An OpenDAL operator on the test bucket, to look at and clean up objects.
pub fn s3_operator() -> opendal::Operator {
    let builder = opendal::services::S3::default()
        .bucket(&s3_bucket())
        .root("/")
        .endpoint(&s3_endpoint())
        .region("us-east-1")
        .access_key_id(S3_KEY_ID)
        .secret_access_key(S3_SECRET);
    opendal::Operator::new(builder).unwrap().finish()
}

/// Runs `f` on one runtime for all S3 calls of the test process: OpenDAL's
/// HTTP client pools connections, and a connection made on a runtime that
/// no longer runs would hang the next request.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
        .block_on(f)
}

/// An object's bytes.
pub fn s3_read(key: &str) -> Vec<u8> {
    block_on(async { s3_operator().read(key).await })
        .unwrap_or_else(|e| panic!("read s3 object {key}: {e}"))
        .to_vec()
}

/// The keys of the objects under `prefix` (no leading `/`) in the bucket.
pub fn s3_list(prefix: &str) -> Vec<String> {
    let op = s3_operator();
    let root = format!("{}/", prefix.trim_matches('/'));
    let mut keys: Vec<String> = block_on(async { op.list_with(&root).recursive(true).await })
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| e.path().to_string())
        .collect();
    keys.sort();
    keys
}

/// Writes an object.
pub fn s3_put(key: &str, bytes: Vec<u8>) {
    block_on(s3_operator().write(key, bytes)).unwrap_or_else(|e| panic!("put s3 object {key}: {e}"));
}

/// Deletes an object.
pub fn s3_delete(key: &str) {
    block_on(s3_operator().delete(key)).unwrap_or_else(|e| panic!("delete s3 object {key}: {e}"));
}

/// Deletes every object under `prefix` in the bucket.
pub fn s3_delete_prefix(prefix: &str) {
    let prefix = format!("{}/", prefix.trim_matches('/'));
    assert!(prefix.len() > 1, "refusing to empty the whole bucket");
    block_on(async { s3_operator().delete_with(&prefix).recursive(true).await })
        .unwrap_or_else(|e| panic!("delete s3 prefix {prefix}: {e}"));
}

/// Where a test's tables are: the catalog K2 writes through and pyiceberg
/// reads through, and the job's namespace.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The `[iceberg]` keys other than the namespace, and an `[s3]` section
    /// if the tables are in S3.
    toml: String,
    /// read_iceberg.py's catalog arguments.
    args: Vec<String>,
    /// The job's namespace.
    pub namespace: String,
    /// The S3 prefix of the test's files (no leading `/`), if in S3.
    pub s3_prefix: Option<String>,
}

/// The `[s3]` section of the local store.
fn s3_section() -> String {
    format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\naccess_key_id = \"{S3_KEY_ID}\"\n\
         secret_access_key = \"{S3_SECRET}\"\n",
        s3_endpoint()
    )
}

/// A namespace unique to one test run.
pub fn unique_namespace(name: &str) -> String {
    format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl Catalog {
    /// The default: SQLite and the warehouse in `dir/warehouse`, namespace
    /// `market_data`.
    pub fn local(dir: &Path) -> Catalog {
        let warehouse = dir.join("warehouse");
        Catalog {
            toml: format!("warehouse = \"{}\"\n", warehouse.display()),
            args: vec![
                "--catalog-uri".into(),
                format!("sqlite:///{}", warehouse.join("catalog.db").display()),
                "--warehouse".into(),
                warehouse.display().to_string(),
            ],
            namespace: "market_data".into(),
            s3_prefix: None,
        }
    }

    /// The SQL catalog in SQLite at `dir/catalog.db`, its warehouse in a
    /// fresh prefix of the S3 store.
    pub fn sql_s3(dir: &Path, name: &str) -> Catalog {
        let endpoint = require_s3();
        let prefix = format!("k2-tests/{}", unique_namespace(name));
        let warehouse = format!("s3://{}/{prefix}", s3_bucket());
        let db = dir.join("catalog.db");
        Catalog {
            toml: format!(
                "warehouse = \"{warehouse}\"\ncatalog_uri = \"sqlite:{}?mode=rwc\"\n",
                db.display()
            ),
            args: vec![
                "--catalog-uri".into(),
                format!("sqlite:///{}", db.display()),
                "--warehouse".into(),
                warehouse,
                "--s3-endpoint".into(),
                endpoint,
            ],
            namespace: unique_namespace(name),
            s3_prefix: Some(prefix),
        }
    }

    /// The REST catalog of `scripts/iceberg-rest.sh`, in a fresh namespace.
    pub fn rest(name: &str) -> Catalog {
        let uri = require_rest();
        let warehouse = rest_warehouse();
        let namespace = unique_namespace(name);
        // The server puts a namespace's tables under <warehouse>/<namespace>.
        let prefix = warehouse
            .strip_prefix(&format!("s3://{}/", s3_bucket()))
            .map(|p| format!("{}/{namespace}", p.trim_matches('/')));
        Catalog {
            toml: format!("catalog = \"rest\"\ncatalog_uri = \"{uri}\"\nwarehouse = \"{warehouse}\"\n"),
            args: vec![
                "--catalog".into(),
                "rest".into(),
                "--catalog-uri".into(),
                uri,
                "--warehouse".into(),
                warehouse,
                "--s3-endpoint".into(),
                s3_endpoint(),
            ],
            namespace,
            s3_prefix: prefix,
        }
    }

    /// The config sections for K2: `[iceberg]` (with the namespace) and,
    /// for S3, `[s3]`.
    pub fn toml(&self) -> String {
        let s3 = if self.s3_prefix.is_some() {
            s3_section()
        } else {
            String::new()
        };
        format!("[iceberg]\nnamespace = \"{}\"\n{}\n{s3}", self.namespace, self.toml)
    }

    /// `namespace.table`.
    pub fn ident(&self, table: &str) -> String {
        format!("{}.{table}", self.namespace)
    }

    /// A command running the pyiceberg script `script` (in tests/py) on
    /// this catalog; callers add its other arguments.
    pub fn py(&self, script: &str) -> Command {
        let mut cmd = Command::new(python());
        cmd.arg(root().join("tests/py").join(script))
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET);
        cmd
    }

    /// Drops the namespace with its tables and deletes the test's objects.
    pub fn drop(&self) {
        if self.s3_prefix.is_none() && self.namespace == "market_data" {
            return; // a local warehouse goes with its folder
        }
        ok(self.py("iceberg_admin.py").args(["drop-namespace", &self.namespace]));
        if let Some(prefix) = &self.s3_prefix {
            s3_delete_prefix(prefix);
        }
    }
}

/// A bronze job config for `catalog`, checkpoints in `dir/checkpoints`,
/// written to `dir/{job}.toml`.
pub fn job_config(dir: &Path, job: &str, brokers: &str, topics: &(String, String), catalog: &Catalog) -> PathBuf {
    let path = dir.join(format!("{job}.toml"));
    let text = format!(
        r#"
[job]
name = "{job}"
epoch_ms = 100
commit_interval_ms = 300

[kafka]
brokers = "{brokers}"
topics = {{ binance = "{}", kraken = "{}" }}

[checkpoint]
dir = "{}"

{}
"#,
        topics.0,
        topics.1,
        dir.join("checkpoints").display(),
        catalog.toml()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Moves the checkpoints of the job config at `config` (written by
/// [`job_config`]) to a fresh prefix of the S3 store, with a lease of
/// `lease_ms`; returns the prefix (no leading `/`), to delete at the end.
pub fn checkpoints_in_s3(config: &Path, name: &str, lease_ms: u64) -> String {
    require_s3();
    let prefix = format!("k2-tests/{}", unique_namespace(name));
    let text = std::fs::read_to_string(config).unwrap();
    let start = text.find("[checkpoint]\ndir = ").expect("a [checkpoint] dir");
    let end = start + text[start..].find("\"\n").unwrap() + 2;
    let section = format!(
        "[checkpoint]\ndir = \"s3://{}/{prefix}\"\nlease_ms = {lease_ms}\n",
        s3_bucket()
    );
    std::fs::write(config, format!("{}{section}{}", &text[..start], &text[end..])).unwrap();
    prefix
}
