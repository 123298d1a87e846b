//! The broker's SASL_SSL listener (TLS with the project's CA, SCRAM-SHA-512)
//! for the tests, and configs and feeds that use it.
//!
//! The credentials come from `scripts/kafka.sh sasl-config`, which reads them
//! where the broker keeps them: `var/kafka` of this repository (CI starts the
//! broker from the clone), or `$K2_KAFKA_DIR`.

use super::*;
use k2::config::{KafkaConfig, KafkaSecurity, SaslMechanism, SecurityProtocol};

/// How to reach the SASL_SSL listener. No `Debug`: it holds the password.
pub struct Sasl {
    /// `host:port` of the listener.
    pub bootstrap: String,
    /// The SASL mechanism, e.g. `SCRAM-SHA-512`.
    pub mechanism: String,
    /// The SCRAM user.
    pub username: String,
    password: String,
    /// The CA that signed the broker's certificate.
    pub ca_file: PathBuf,
}

/// The broker's SASL_SSL listener (the broker is started if needed).
pub fn sasl() -> Sasl {
    broker();
    let text = run_script("scripts/kafka.sh", &["sasl-config"]);
    let props: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        props
            .get(k)
            .unwrap_or_else(|| panic!("`scripts/kafka.sh sasl-config` prints no {k}"))
            .to_string()
    };
    assert_eq!(get("security.protocol"), "SASL_SSL");
    Sasl {
        bootstrap: get("bootstrap.servers"),
        mechanism: get("sasl.mechanisms"),
        username: get("sasl.username"),
        password: get("sasl.password"),
        ca_file: PathBuf::from(get("ssl.ca.location")),
    }
}

impl Sasl {
    /// The password (for leak checks; never print it).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Writes the password into a file of its own (mode 600), in a folder
    /// apart from any job's, and returns its path; [`forget`] removes it.
    pub fn password_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_dir("secret").join("kafka-password");
        std::fs::write(&path, format!("{}\n", self.password)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A `[kafka.security]` table for a job config, the password written as
    /// `password` says (`{ file = "..." }` or `{ env = "..." }`).
    pub fn security_table(&self, password: &str) -> String {
        format!(
            "\n[kafka.security]\nprotocol = \"SASL_SSL\"\nsasl_mechanism = \"{}\"\nusername = \"{}\"\npassword = {password}\nca_file = \"{}\"\n",
            self.mechanism,
            self.username,
            self.ca_file.display()
        )
    }

    /// Kafka settings for the test's own clients (reading topics back).
    pub fn kafka_config(&self) -> KafkaConfig {
        let mechanism = match self.mechanism.as_str() {
            "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            "PLAIN" => SaslMechanism::Plain,
            other => panic!("unexpected SASL mechanism {other}"),
        };
        let mut kafka = KafkaConfig::plaintext(&self.bootstrap);
        kafka.security = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(mechanism),
            username: Some(self.username.clone()),
            password: Some(k2::secret::Secret::new(self.password.clone())),
            ca_file: Some(self.ca_file.clone()),
            ..KafkaSecurity::default()
        };
        kafka
    }
}

/// `k2 produce` into `topics` (4 partitions) with the Kafka settings of the
/// job config `config` (its brokers and `[kafka.security]`); callers add the
/// feed's flags.
pub fn produce_cmd_with_config(config: &Path, topics: &(String, String)) -> Command {
    let mut cmd = k2();
    cmd.args(["produce", "--config"])
        .arg(config)
        .args(["--binance-topic", &topics.0, "--kraken-topic", &topics.1])
        .args(["--partitions", "4"]);
    cmd
}

/// Removes a secret file written by [`Sasl::password_file`] (or beside it).
pub fn forget(secret_file: &Path) {
    if let Some(dir) = secret_file.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
