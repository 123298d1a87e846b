//! The README shows `dataflows/ohlcv.rs` in full: keep the two the same.

#[test]
fn the_readme_shows_ohlcv_rs_as_it_is() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ohlcv = std::fs::read_to_string(root.join("dataflows/ohlcv.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{}\n```", ohlcv.trim_end())),
        "README.md's \"Writing a dataflow\" must end with dataflows/ohlcv.rs as it is now"
    );
}

/// The config under "Production deployment" is a valid config: S3
/// checkpoints, a REST catalog, SASL_SSL (secrets replaced by values here).
#[test]
fn the_readme_production_config_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Production deployment").expect("the section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let toml = &section[start..start + section[start..].find("```").unwrap()];
    let resolved: String = toml
        .lines()
        .map(|l| match l.find("{ env = ").or_else(|| l.find("{ file = ")) {
            Some(i) => format!("{}\"a-secret\"", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The CA file must exist when the config loads.
    let ca = std::env::temp_dir().join(format!("k2-readme-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "a CA certificate").unwrap();
    let resolved = resolved.replace("/etc/k2/kafka-ca.pem", ca.to_str().unwrap());
    let config = k2::config::Config::from_toml_with_env(&resolved, std::iter::empty())
        .unwrap_or_else(|e| panic!("the README's production config: {e}\n{resolved}"));
    assert_eq!(config.checkpoint.dir, std::path::Path::new("s3://lake/k2-checkpoints"));
    let _ = std::fs::remove_file(&ca);
    let shown = format!("{config:?}");
    assert!(!shown.contains("a-secret"), "a secret in the config's Debug output");
}
