//! The files an operator deploys with, checked as far as this machine can:
//! `--version` and `check --help`, the Containerfile (parsed: no container
//! engine runs here), the systemd unit (`systemd-analyze verify` when it is
//! installed), the Kubernetes manifests (the real `kubernetes-validate`,
//! installed by `scripts/setup-tools.sh`; the ConfigMap's config through the
//! proxy's own `check`), config.example.toml's layout, and that no tracked file
//! points outside the repository.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use regex::Regex;
use serde_json::Value;

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

// --- Kubernetes -------------------------------------------------------------

/// Kubernetes versions the manifests are validated against: the oldest one
/// they need (the preStop `sleep` action is on by default from 1.30) and the
/// newest that the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
const SETUP_HINT: &str = "run scripts/setup-tools.sh (or the README's test command) first";

/// A program from the test tools' venv (`$MOP_TOOLS`, else `<repo>/.tools`).
fn venv_tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("MOP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"));
    let path = tools.join("venv/bin").join(name);
    assert!(
        path.exists(),
        "test tool missing: {} does not exist; {SETUP_HINT}",
        path.display()
    );
    path
}

const KUBERNETES: &str = "deploy/kubernetes";

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

/// Every document of a YAML file, as JSON, read by PyYAML (which the
/// validator's venv has).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: not YAML:\n{}",
        path.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The CRD-based kinds the validator has no schema for.
fn is_custom_resource(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let validator = venv_tool("kubernetes-validate");
    let mut files = Vec::new();
    yaml_files(&repo().join(KUBERNETES), &mut files);
    assert!(files.len() >= 7, "{files:?}");
    let mut kinds = BTreeSet::new();
    for file in &files {
        let docs = yaml_documents(file);
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in &docs {
            kinds.insert(doc["kind"].as_str().unwrap_or("").to_owned());
            assert!(
                doc["metadata"]["name"].is_string(),
                "{}: a name",
                file.display()
            );
        }
        if docs.iter().any(is_custom_resource) {
            // No schema for CRDs here: checked structurally below instead.
            assert!(
                docs.iter().all(is_custom_resource),
                "{}: keep CRDs in their own file",
                file.display()
            );
            continue;
        }
        let mut cmd = Command::new(&validator);
        cmd.arg("--strict");
        for version in KUBERNETES_VERSIONS {
            cmd.args(["-k", version]);
        }
        let out = cmd.arg(file).output().unwrap();
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        // It exits 0 for a kind it has no schema for (a typo in apiVersion,
        // say) and only warns: a warning is a failure here.
        assert!(
            out.status.success() && !report.contains("WARN") && !report.contains("ERROR"),
            "kubernetes-validate refuses {}:\n{report}",
            file.display()
        );
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(passed, docs.len() * KUBERNETES_VERSIONS.len(), "{report}");
    }
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {KUBERNETES}: {kinds:?}");
    }
}

fn manifest(rel: &str) -> Vec<Value> {
    yaml_documents(&repo().join(KUBERNETES).join(rel))
}

fn one_of_kind(rel: &str, kind: &str) -> Value {
    let docs = manifest(rel);
    assert_eq!(docs.len(), 1, "{rel}");
    assert_eq!(docs[0]["kind"], kind, "{rel}");
    docs[0].clone()
}

/// The mount of a volume, and the volume, for a path the container reads.
fn volume_for<'a>(
    pod: &'a Value,
    container: &'a Value,
    path: &str,
) -> Option<(&'a Value, &'a Value)> {
    container["volumeMounts"].as_array()?.iter().find_map(|m| {
        let mount = m["mountPath"].as_str()?;
        let inside = match m["subPath"].as_str() {
            Some(_) => path == mount,
            None => Path::new(path).starts_with(mount),
        };
        if !inside {
            return None;
        }
        let volume = pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == m["name"])?;
        Some((m, volume))
    })
}

fn port_number(container: &Value, name: &str) -> i64 {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn kubernetes_deployment_serves_the_configmap_config_with_secrets_and_probes() {
    let deployment = one_of_kind("deployment.yaml", "Deployment");
    let configmap = one_of_kind("configmap.yaml", "ConfigMap");
    let secrets = manifest("examples/secrets.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The config the pods run: valid for the proxy as it stands.
    let config_text = configmap["data"]["config.toml"]
        .as_str()
        .expect("data.config.toml");
    let config = mongo_oidc_proxy::config::Config::parse(config_text)
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml is refused: {e}"));
    let raw: toml::Table = toml::from_str(config_text).unwrap();
    let drain_secs = raw
        .get("shutdown")
        .and_then(|s| s.get("drain_secs"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(DEFAULT_DRAIN_SECS);

    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("the container runs --config FILE");
    let (mount, volume) = volume_for(pod, c, config_path).expect("the config file is mounted");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    assert_eq!(mount["subPath"], "config.toml");

    // Ports: the config listens where the container, probes and Service say.
    assert_eq!(
        i64::from(config.listen.address.port()),
        port_number(c, "mongodb")
    );
    let metrics = config
        .metrics
        .as_ref()
        .expect("[metrics] is on in Kubernetes");
    assert!(
        metrics.address.ip().is_unspecified(),
        "the kubelet reaches /metrics from outside the pod"
    );
    assert!(config.listen.address.ip().is_unspecified());
    assert_eq!(i64::from(metrics.address.port()), port_number(c, "metrics"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        metrics.address.port().to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Shutdown: the Service stops routing during preStop, then SIGTERM drains.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("preStop sleep");
    assert!((2..=15).contains(&pre_stop), "preStop sleep {pre_stop}");
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace > pre_stop + drain_secs,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain_secs {drain_secs}"
    );

    // Security and resources.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    for kind in ["requests", "limits"] {
        assert!(
            c["resources"][kind]["memory"].is_string(),
            "resources.{kind}.memory"
        );
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());

    // Secrets: the TLS pair and every grant's password come from Secrets the
    // examples define, under the names the config uses.
    let secret = |name: &str| -> &Value {
        secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("examples/secrets.yaml has no Secret {name}"))
    };
    let secret_file = |path: &Path, what: &str| {
        let path = path.to_str().unwrap();
        let (mount, volume) =
            volume_for(pod, c, path).unwrap_or_else(|| panic!("{what} {path} is not mounted"));
        let name = volume["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{what} {path} is not from a Secret"));
        let file = Path::new(path)
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap();
        let key = match volume["secret"]["items"].as_array() {
            Some(items) => items
                .iter()
                .find(|i| i["path"].as_str() == file.to_str())
                .and_then(|i| i["key"].as_str())
                .unwrap_or_else(|| panic!("{what}: no item has path {}", file.display())),
            None => file.to_str().unwrap(),
        };
        let s = secret(name);
        assert!(
            s["stringData"][key].is_string() || s["data"][key].is_string(),
            "Secret {name} has no {key}"
        );
        s["type"].as_str().unwrap_or("").to_owned()
    };
    assert_eq!(
        secret_file(&config.listen.tls_cert, "tls_cert"),
        "kubernetes.io/tls"
    );
    assert_eq!(
        secret_file(&config.listen.tls_key, "tls_key"),
        "kubernetes.io/tls"
    );
    let env = c["env"].as_array().cloned().unwrap_or_default();
    for (i, grant) in config.grant.iter().enumerate() {
        if let Some(file) = &grant.backend_password_file {
            secret_file(file, &format!("grant[{i}].backend_password_file"));
        }
        if let Some(var) = &grant.backend_password_env {
            let from = env
                .iter()
                .find(|e| e["name"] == var.as_str())
                .map(|e| &e["valueFrom"]["secretKeyRef"])
                .unwrap_or_else(|| panic!("grant[{i}]: no env {var}"));
            let s = secret(from["name"].as_str().expect("env from a Secret"));
            assert!(
                s["stringData"][from["key"].as_str().unwrap()].is_string(),
                "{var}: {from}"
            );
        }
    }
    for s in &secrets {
        let data = s["stringData"]
            .as_object()
            .expect("examples use stringData");
        for (key, value) in data {
            assert!(
                value.as_str().unwrap().contains("PLACEHOLDER"),
                "{key} is an obvious placeholder"
            );
        }
    }

    // The proxy's own check accepts this config once the files exist: the
    // mount paths are moved into a temporary folder holding dev certificates.
    let dir = tempfile::tempdir().unwrap();
    let certs =
        mongo_oidc_proxy_devkit::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
    let mut local = config_text
        .replace(
            config.listen.tls_cert.to_str().unwrap(),
            certs.server_cert.to_str().unwrap(),
        )
        .replace(
            config.listen.tls_key.to_str().unwrap(),
            certs.server_key.to_str().unwrap(),
        );
    let mut env_vars = Vec::new();
    for grant in &config.grant {
        if let Some(file) = &grant.backend_password_file {
            let local_file = dir.path().join(file.file_name().unwrap());
            std::fs::write(&local_file, "placeholder-password").unwrap();
            local = local.replace(file.to_str().unwrap(), local_file.to_str().unwrap());
        }
        if let Some(var) = &grant.backend_password_env {
            env_vars.push((var.as_str(), "placeholder-password"));
        }
    }
    assert!(
        !local.contains("/etc/mongo-oidc-proxy"),
        "every file path was moved:\n{local}"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, local).unwrap();
    let out = proxy(&["check", "--config", path.to_str().unwrap()], &env_vars);
    assert!(
        out.status.success(),
        "check refuses the ConfigMap's config: {}",
        text(&out.stderr)
    );
}

#[test]
fn kubernetes_service_budget_autoscaler_and_monitor_select_the_proxies() {
    let deployment = one_of_kind("deployment.yaml", "Deployment");
    let labels = deployment["spec"]["template"]["metadata"]["labels"].clone();
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];

    let service = one_of_kind("service.yaml", "Service");
    assert_eq!(service["spec"]["selector"], labels);
    let ports = service["spec"]["ports"].as_array().unwrap();
    let mut by_name = BTreeMap::new();
    for p in ports {
        let target = p["targetPort"].as_str().expect("named targetPort");
        port_number(c, target);
        by_name.insert(
            p["name"].as_str().unwrap().to_owned(),
            p["port"].as_i64().unwrap(),
        );
    }
    assert_eq!(by_name.get("mongodb"), Some(&27017));
    assert_eq!(by_name.get("metrics"), Some(&9216));

    let pdb = one_of_kind("poddisruptionbudget.yaml", "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], labels);
    let spec = &pdb["spec"];
    assert!(
        spec["maxUnavailable"] == 1 || spec["minAvailable"] == 2,
        "one proxy out at a time: {spec}"
    );

    let hpa = one_of_kind("horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_i64().unwrap() >= 2);
    let metrics = hpa["spec"]["metrics"].as_array().unwrap();
    assert!(
        metrics.iter().any(|m| m["resource"]["name"] == "cpu"),
        "{metrics:?}"
    );

    // No schema for the CRD: the parts that must line up with the Service.
    let monitor = one_of_kind("prometheus-operator/servicemonitor.yaml", "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint names a Service port");
        assert!(by_name.contains_key(port), "{port}");
        assert_eq!(e["path"], "/metrics");
    }
}

// --- config.example.toml ------------------------------------------------------

#[test]
fn example_config_puts_top_level_keys_before_the_first_table() {
    let example = read("config.example.toml");
    let first_table = example
        .lines()
        .position(|l| l.trim_start().starts_with('['))
        .expect("a [table]");
    for key in ["identity_providers_json", "identity_providers_file"] {
        let at = example
            .lines()
            .position(|l| {
                l.trim_start()
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with(key)
            })
            .unwrap_or_else(|| panic!("config.example.toml does not show {key}"));
        assert!(
            at < first_table,
            "{key} (line {}) must come before the first table (line {})",
            at + 1,
            first_table + 1
        );
    }
}

// --- the repository stands alone ------------------------------------------

/// Documents of the founders' folder outside the repository, spelled in
/// pieces so that this file does not name them itself.
const OUTSIDE_DOCUMENTS: [&str; 5] = [
    concat!("OIDC-", "REFERENCE"),
    concat!("CLIENTS", ".md"),
    concat!("BACKEND", ".md"),
    concat!("PEERS", ".md"),
    concat!("DESIGN", ".md"),
];

/// Whether `ups` times `../` from `file`'s folder leads above the repository's root.
fn escapes_repository(file: &str, ups: usize) -> bool {
    let depth = Path::new(file).parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    ups > depth
}

#[test]
fn no_tracked_file_refers_to_paths_outside_the_repository() {
    let Some(listing) = git(&["ls-files", "-z"]) else {
        println!("note: not a git work tree (a source tarball?): nothing to scan");
        return;
    };
    let tracked: Vec<&str> = listing.split('\0').filter(|f| !f.is_empty()).collect();
    let basenames: BTreeSet<&str> = tracked
        .iter()
        .filter_map(|f| Path::new(f).file_name()?.to_str())
        .collect();
    // The founders' folder, not preceded by a path character.
    let shared = Regex::new(concat!(r"(^|[^A-Za-z0-9_./-])", "sha", "red/")).unwrap();
    let ups = Regex::new(r"(^|[^A-Za-z0-9_.-])((\.\./)+)").unwrap();
    let machine = Regex::new(concat!(r"(^|[^A-Za-z0-9_.-])/", "work/")).unwrap();
    let mut offenders = Vec::new();
    for file in &tracked {
        let name = Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if ["Cargo.lock", "package-lock.json"].contains(&name) {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(repo().join(file)) else {
            continue; // binary, or deleted in the work tree
        };
        for (n, line) in content.lines().enumerate() {
            let mut why = Vec::new();
            if shared.is_match(line) {
                why.push(concat!("sha", "red/").to_owned());
            }
            for doc in OUTSIDE_DOCUMENTS {
                // A document of that name inside the repository may be named.
                if line.contains(doc) && !basenames.iter().any(|b| b.starts_with(doc)) {
                    why.push(doc.to_owned());
                }
            }
            for caps in ups.captures_iter(line) {
                let count = caps[2].len() / 3;
                if escapes_repository(file, count) {
                    why.push(caps[2].to_owned());
                }
            }
            if machine.is_match(line) {
                why.push(concat!("/", "work/").to_owned());
            }
            if !why.is_empty() {
                offenders.push(format!(
                    "{file}:{}: {} — {}",
                    n + 1,
                    why.join(", "),
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tracked files refer to paths outside the repository (the founders' folder and its \
         documents are not part of it; say what they said in the repository's own docs, e.g. \
         docs/protocol.md):\n{}",
        offenders.join("\n")
    );
}
