//! The files an operator deploys with, checked as far as this machine can:
//! `--version` and `check --help`.

use std::path::Path;
use std::process::{Command, Output};

use regex::Regex;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"));
    cmd.args(args).env_remove("MONGO_OIDC_PROXY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mongo-oidc-proxy")
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_owned())
}

// --- version -------------------------------------------------------------

#[test]
fn version_names_the_crate_version_and_the_git_commit() {
    let out = proxy(&["--version"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let re = Regex::new(r"^mongo-oidc-proxy (\S+) \(commit ([0-9a-f]{4,40}|unknown)\)\n$").unwrap();
    let caps = re
        .captures(&line)
        .unwrap_or_else(|| panic!("--version prints {line:?}"));
    assert_eq!(&caps[1], env!("CARGO_PKG_VERSION"), "{line}");
    // What build.rs must have found: $MOP_GIT_COMMIT, else this work tree's
    // HEAD, else "unknown" (a source tarball).
    let is_work_tree = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| Some(top) == repo().canonicalize().ok());
    let want = match option_env!("MOP_GIT_COMMIT").filter(|c| !c.is_empty()) {
        Some(commit) => commit.to_owned(),
        None if is_work_tree => git(&["rev-parse", "--short", "HEAD"]).expect("git rev-parse"),
        None => "unknown".to_owned(),
    };
    assert_eq!(&caps[2], want, "{line}");
}

#[test]
fn check_help_describes_the_config_flag() {
    let out = proxy(&["check", "--help"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let line = help
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("-c, --config <FILE>") || l.starts_with("--config <FILE>"))
        .unwrap_or_else(|| panic!("check --help has no --config:\n{help}"));
    assert!(
        line.split("--config <FILE>")
            .nth(1)
            .is_some_and(|d| d.trim().len() > 10),
        "check --help does not describe --config:\n{help}"
    );
}
