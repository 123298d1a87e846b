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
