//! The files an operator deploys with, checked as far as this machine can:
//! `--version` and `check --help`, the Containerfile (parsed: no container
//! engine runs here), and the systemd unit (`systemd-analyze verify` when it is
//! installed).

use std::collections::{BTreeMap, BTreeSet};
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

// --- Containerfile -----------------------------------------------------------

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// One instruction of a Containerfile: its keyword (upper case) and the rest.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Build stages, each a list of instructions starting with its FROM.
fn containerfile_stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Containerfile ends inside a continued line"
    );
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let ins = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if ins.keyword == "FROM" {
            stages.push(Vec::new());
        }
        match stages.last_mut() {
            Some(stage) => stage.push(ins),
            None => assert!(
                ins.keyword == "ARG",
                "{} before the first FROM",
                ins.keyword
            ),
        }
    }
    stages
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

#[test]
fn containerfile_builds_in_a_rust_stage_and_runs_unprivileged_with_a_health_check() {
    let stages = containerfile_stages(&read("Containerfile"));
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    for stage in &stages {
        let image = stage[0].args.split_whitespace().next().unwrap_or("");
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "every base image has a pinned tag: FROM {}",
            stage[0].args
        );
    }

    let builder = &stages[0];
    let from = builder[0].args.to_ascii_lowercase();
    assert!(
        Regex::new(r"^(docker\.io/(library/)?)?rust:1-bookworm\s+as\s+builder$")
            .unwrap()
            .is_match(&from),
        "first stage is FROM rust:1-bookworm AS builder, not FROM {from}"
    );
    assert!(
        find(builder, "RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );

    let runtime = stages.last().unwrap();
    let base = runtime[0].args.to_ascii_lowercase();
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian12") || base.contains("debian:bookworm-slim"),
        "final stage is distroless/cc or debian:bookworm-slim, not {base}"
    );
    assert!(
        find(runtime, "RUN").is_empty() || base.contains("debian:bookworm-slim"),
        "a distroless stage has no shell to RUN in"
    );
    let copies = find(runtime, "COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=builder")
                && c.ends_with("/usr/local/bin/mongo-oidc-proxy")),
        "the binary is copied from the builder: {copies:?}"
    );

    let users = find(runtime, "USER");
    let user = users.last().expect("the final stage sets USER");
    let name = user.split(':').next().unwrap_or("");
    assert!(
        !["root", "0", ""].contains(&name),
        "the final stage runs as a non-root user, not {user}"
    );

    let exposed: BTreeSet<&str> = find(runtime, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert!(
        exposed.contains("27017") && exposed.contains("9216"),
        "EXPOSE 27017 9216: {exposed:?}"
    );

    let health = find(runtime, "HEALTHCHECK");
    let health = health.last().expect("the final stage has a HEALTHCHECK");
    assert!(
        health.contains("/healthz") && health.contains("9216"),
        "{health}"
    );
    // Exec form: its program must be in the image (no shell to find it).
    let cmd = health
        .split("CMD")
        .nth(1)
        .expect("HEALTHCHECK ... CMD [...]");
    let argv: Vec<String> = serde_json::from_str(cmd.trim()).expect("HEALTHCHECK CMD in exec form");
    assert!(
        copies.iter().any(|c| c.ends_with(argv[0].as_str())),
        "the health-check program {} is copied into the final stage: {copies:?}",
        argv[0]
    );
    let entrypoint = find(runtime, "ENTRYPOINT");
    assert!(
        entrypoint
            .last()
            .is_some_and(|e| e.contains("/usr/local/bin/mongo-oidc-proxy")),
        "ENTRYPOINT runs the proxy: {entrypoint:?}"
    );

    // The build context leaves out the multi-gigabyte build and tool folders.
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", ".tools", ".git"] {
        assert!(ignored.contains(needed), ".dockerignore lacks {needed}");
    }
}

// --- systemd -------------------------------------------------------------------

/// `[shutdown] drain_secs` when the config does not set it.
const DEFAULT_DRAIN_SECS: i64 = 15;

/// `[section] key=value` lines of a unit file; a key may repeat.
fn unit_settings(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut settings: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        settings
            .entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    settings
}

const UNIT: &str = "deploy/systemd/mongo-oidc-proxy.service";

#[test]
fn systemd_unit_checks_reloads_drains_and_is_hardened() {
    let unit = read(UNIT);
    let settings = unit_settings(&unit);
    let get = |key: &str| -> Vec<String> {
        settings
            .get(&("Service".to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default()
    };
    let one = |key: &str| -> String {
        let values = get(key);
        assert_eq!(values.len(), 1, "{key}= once in [Service]: {values:?}");
        values[0].clone()
    };
    for (key, want) in [
        ("Type", "exec"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("LimitNOFILE", "65536"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    assert!(
        one("User") != "root" || one("DynamicUser") == "yes",
        "the service runs as its own user"
    );
    let timeout: i64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        timeout > DEFAULT_DRAIN_SECS + 5,
        "TimeoutStopSec={timeout} leaves the {DEFAULT_DRAIN_SECS} s drain no margin"
    );
    assert!(
        !get("LoadCredential").is_empty(),
        "secrets come as credentials"
    );
    assert!(get("ReadOnlyPaths")
        .iter()
        .any(|p| p.contains("/etc/mongo-oidc-proxy")));

    let reload = get("ExecReload");
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID"),
        "{reload:?}"
    );
    let pre = one("ExecStartPre");
    let start = one("ExecStart");
    // The command lines are ones the proxy accepts: against a missing file they
    // fail reading it, not parsing the arguments.
    for command in [&pre, &start, &reload[0]] {
        let argv: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(argv[0], "/usr/local/bin/mongo-oidc-proxy", "{command}");
        let config = argv
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| argv.get(i + 1))
            .unwrap_or_else(|| panic!("{command} names --config"));
        assert_eq!(*config, "/etc/mongo-oidc-proxy/config.toml");
        let args: Vec<&str> = argv[1..]
            .iter()
            .map(|a| {
                if a == config {
                    "/nonexistent/config.toml"
                } else {
                    a
                }
            })
            .collect();
        let out = proxy(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(
            text(&out.stderr).contains("cannot read the config file"),
            "{command}: {}",
            text(&out.stderr)
        );
    }
    assert!(pre.contains(" check "), "ExecStartPre runs check: {pre}");

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("note: systemd-analyze is not installed (Debian: apt-get install systemd); the unit was not verified by systemd");
        return;
    }
    // systemd insists that the programs exist: point them at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mongo-oidc-proxy.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/mongo-oidc-proxy",
            env!("CARGO_BIN_EXE_mongo-oidc-proxy"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    // verify exits 0 even on unknown keys and bad values, but says so.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify refuses the unit:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Exposure 0 (locked down) .. 10 (unprotected); this unit is about 1.5.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 2.5:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
