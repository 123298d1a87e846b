//! Secrets in the config: SASL passwords, object-store keys, catalog
//! credentials.
//!
//! A [`Secret`] is written in the config as where to find it, never (unless
//! one insists) as the value:
//!
//! ```toml
//! password = { env = "K2_KAFKA_PASSWORD" }     # an environment variable
//! password = { file = "/run/secrets/kafka" }   # a file (trailing newline dropped)
//! password = "plain"                            # accepted, but it is in the file
//! ```
//!
//! It is read when the config is loaded, so a missing variable or file is a
//! config error that names the key, not a failure later. Its `Debug`,
//! `Display` and `Serialize` all print `***`, so it appears in no log, error,
//! report, effective config or cluster handshake; only [`Secret::expose`]
//! gives the value, to the client that needs it. [`redact_uri`] hides the
//! credentials of a URI for messages.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A secret value; see the module docs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Where it came from, for messages: `env K2_X`, `file /p`, `the config`.
    origin: String,
}

/// How a secret is written in the config.
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Written {
    Plain(String),
    Env { env: String },
    File { file: std::path::PathBuf },
}

impl Secret {
    /// A secret with a known value (tests, and values from other secrets).
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            origin: "a value".into(),
        }
    }

    /// The environment variable `name`'s value.
    pub fn from_env(name: &str) -> Result<Self, String> {
        match std::env::var(name) {
            Ok(value) => Ok(Secret {
                value,
                origin: format!("environment variable {name}"),
            }),
            Err(_) => Err(format!("the environment variable {name} is not set")),
        }
    }

    /// The file `path`'s contents, without a trailing newline.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Secret {
                value: text.trim_end_matches(['\n', '\r']).to_string(),
                origin: format!("file {}", path.display()),
            }),
            Err(e) => Err(format!("cannot read the secret file {}: {e}", path.display())),
        }
    }

    /// The value, for the client that needs it. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value came from (never the value).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = Written::deserialize(d)
            .map_err(|_| D::Error::custom("expected a secret: { env = \"VAR\" }, { file = \"path\" } or a string"))?;
        match written {
            Written::Plain(value) => Ok(Secret {
                value,
                origin: "the config".into(),
            }),
            Written::Env { env } => Secret::from_env(&env).map_err(D::Error::custom),
            Written::File { file } => Secret::from_file(&file).map_err(D::Error::custom),
        }
    }
}

/// `uri` with any password (and user) replaced by `***`:
/// `postgres://k2:pw@db/x` → `postgres://***@db/x`. Query parameters named
/// like credentials (`password`, `secret`, `token`, `key`, `credential`)
/// are hidden too.
pub fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.find("://") {
        Some(i) => (&uri[..i + 3], &uri[i + 3..]),
        None => ("", uri),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_name(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Whether a setting's name says it holds a credential (`sasl.password`,
/// `s3.secret-access-key`, `token`, ...).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "private", "key"]
        .iter()
        .any(|w| n.contains(w))
        && !n.ends_with("key.id")
        && !n.ends_with("key-id")
        && !n.ends_with("key_id")
        && !n.ends_with("location")
        && !n.ends_with(".file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize, Debug)]
    struct S {
        password: Secret,
    }

    #[test]
    fn a_secret_prints_as_stars_everywhere() {
        let s: S = toml::from_str(r#"password = "hunter2""#).unwrap();
        assert_eq!(s.password.expose(), "hunter2");
        for shown in [
            format!("{s:?}"),
            format!("{}", s.password),
            serde_json::to_string(&s).unwrap(),
            toml::to_string(&s).unwrap(),
        ] {
            assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn a_secret_comes_from_a_file_or_says_why_not() {
        let path = std::env::temp_dir().join(format!("k2-secret-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let s: S = toml::from_str(&format!("password = {{ file = \"{}\" }}", path.display())).unwrap();
        assert_eq!(s.password.expose(), "s3cret");
        assert!(s.password.origin().starts_with("file "));
        std::fs::remove_file(&path).unwrap();
        let err = toml::from_str::<S>(&format!("password = {{ file = \"{}\" }}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the secret file"), "{err}");
        let err = toml::from_str::<S>(r#"password = { env = "K2_TEST_SURELY_UNSET_VARIABLE" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("K2_TEST_SURELY_UNSET_VARIABLE is not set"), "{err}");
    }

    #[test]
    fn uris_lose_their_credentials() {
        assert_eq!(redact_uri("postgres://k2:pw@db:5432/x"), "postgres://***@db:5432/x");
        assert_eq!(redact_uri("http://cat/v1?token=abc&x=1"), "http://cat/v1?token=***&x=1");
        assert_eq!(redact_uri("sqlite:/tmp/c.db?mode=rwc"), "sqlite:/tmp/c.db?mode=rwc");
        assert_eq!(redact_uri("s3://bucket/prefix"), "s3://bucket/prefix");
        assert!(is_secret_name("sasl.password") && is_secret_name("s3.secret-access-key"));
        assert!(!is_secret_name("s3.access-key-id") && !is_secret_name("ssl.ca.location"));
    }
}
