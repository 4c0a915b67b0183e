//! Every fuzz seed (fuzz/seeds/<target>/) and, when present, every corpus
//! entry (fuzz/corpus/<target>/) through `mongo_oidc_proxy::fuzzing` on the
//! stable toolchain: the targets keep building without nightly, and inputs
//! that once crashed (committed as seeds) stay fixed.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use mongo_oidc_proxy::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_corpus_entry_replays_without_a_failure() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{name}/ is empty: every target needs seeds"
        );
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        for path in seeds.iter().chain(&corpus) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz inputs that fail (reproduce: cargo +nightly fuzz run <target> <file>):\n{}",
        failures.join("\n")
    );
}

/// The fuzz crate has a thin wrapper for each target and no other.
#[test]
fn the_fuzz_crate_wraps_every_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has {bins} targets");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml lacks target {name}"
        );
        let source = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            source.contains(&format!("mongo_oidc_proxy::fuzzing::{name}(data)")),
            "fuzz_targets/{name}.rs does not call fuzzing::{name}"
        );
    }
}
