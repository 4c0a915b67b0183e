//! The observability assets in deploy/: the Prometheus alert rules pass
//! `promtool check rules` and fire (and stay quiet) as intended under
//! `promtool test rules`; the Grafana dashboard is well formed; and every
//! metric name the dashboard's and the rules' expressions use is in the
//! `/metrics` scrape of a running proxy (the real binary) after a sign-in, a
//! refused command, a refused TLS handshake and a reload.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bson::rawdoc;
use mongo_oidc_proxy_devkit::devidp::DevIdp;
use serde_json::{json, Value};
use support::proxy_env::{self, dev_idp_options, shared_files};
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};
use support::{free_port, tools_dir};
use tokio::io::AsyncWriteExt;

const RULES: &str = "deploy/prometheus/mongo-oidc-proxy.rules.yml";
const DASHBOARD: &str = "deploy/grafana/mongo-oidc-proxy.json";
const OPERATIONS: &str = "docs/operations.md";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn promtool() -> PathBuf {
    let path = tools_dir().join("prometheus/promtool");
    assert!(
        path.exists(),
        "{} does not exist; run scripts/setup-tools.sh (it extracts promtool from Debian's prometheus package)",
        path.display()
    );
    path
}

/// A YAML file as JSON, read by PyYAML from the tools' venv.
fn yaml(path: &Path) -> Value {
    let out = Command::new(tools_dir().join("venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}: not YAML:\n{}",
        path.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// Every alerting rule of the rules file.
fn alerts() -> Vec<Value> {
    let doc = yaml(&repo().join(RULES));
    let groups = doc["groups"].as_array().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn dashboard() -> Value {
    let raw = std::fs::read_to_string(repo().join(DASHBOARD)).expect("read the dashboard");
    serde_json::from_str(&raw).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets (rows included)
/// and template-variable queries.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().unwrap_or_default().to_owned());
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

/// The metric names in PromQL text: the proxy's and the process collector's.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let re =
        regex::Regex::new(r"\b(?:mongo_oidc_proxy|process)_[a-z0-9_]*[a-z0-9]\b").expect("regex");
    exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_owned()))
        .collect()
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(repo().join(RULES))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("SUCCESS: 10 rules found"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn every_alert_says_what_to_do_and_operations_md_has_its_section() {
    let docs = std::fs::read_to_string(repo().join(OPERATIONS)).expect("read operations.md");
    let alerts = alerts();
    assert_eq!(alerts.len(), 10);
    for a in &alerts {
        let name = a["alert"].as_str().expect("an alerting rule");
        assert!(name.starts_with("MongoOidcProxy"), "{name}");
        let ann = &a["annotations"];
        for key in ["summary", "description", "runbook"] {
            assert!(
                ann[key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{name} has no {key} annotation"
            );
        }
        assert!(
            !ann.to_string().contains("{{"),
            "{name}: annotations are plain text (the labels say which instance)"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            ann["runbook"].as_str(),
            Some(format!("{OPERATIONS}#{anchor}").as_str())
        );
        assert!(
            docs.contains(&format!("#### {name}\n")),
            "{OPERATIONS} has no '#### {name}' section for the runbook"
        );
        assert!(
            matches!(a["labels"]["severity"].as_str(), Some("page" | "warn")),
            "{name}: severity page or warn"
        );
    }
}

/// One alert's unit test: input series, a time it must be quiet, a time it
/// must fire with these labels, and optionally a later time it has cleared.
struct Case {
    alert: &'static str,
    series: &'static [(&'static str, &'static str)],
    quiet_at: &'static str,
    firing_at: &'static str,
    labels: &'static [&'static [(&'static str, &'static str)]],
    cleared_at: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            alert: "MongoOidcProxyBackendCheckoutFailures",
            series: &[
                ("mongo_oidc_proxy_backend_pool_checkout_failures_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",reason=\"timeout\"}", "0+3x10 30x30"),
                // One failure at 6m: pending, never firing.
                ("mongo_oidc_proxy_backend_pool_checkout_failures_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",reason=\"max_waiters\"}", "0x5 1x35"),
                ("mongo_oidc_proxy_backend_pool_checkout_failures_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",reason=\"connect\"}", "0x40"),
            ],
            quiet_at: "3m",
            firing_at: "8m",
            labels: &[&[("severity", "page"), ("instance", "p1:9216"), ("job", "mongo-oidc-proxy"), ("reason", "timeout")]],
            cleared_at: Some("25m"),
        },
        Case {
            alert: "MongoOidcProxyNotReady",
            series: &[(
                "mongo_oidc_proxy_ready{instance=\"p1:9216\",job=\"mongo-oidc-proxy\"}",
                "1 1 0x20",
            )],
            quiet_at: "6m",
            firing_at: "8m",
            labels: &[&[("severity", "page"), ("instance", "p1:9216"), ("job", "mongo-oidc-proxy")]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyBackendDown",
            series: &[(
                "mongo_oidc_proxy_backend_up{instance=\"p1:9216\",job=\"mongo-oidc-proxy\"}",
                "1 0x20",
            )],
            quiet_at: "2m",
            firing_at: "4m",
            labels: &[&[("severity", "page"), ("instance", "p1:9216"), ("job", "mongo-oidc-proxy")]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyBackendErrors",
            series: &[
                (
                    "mongo_oidc_proxy_backend_errors_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",kind=\"connect\"}",
                    "0+10x40",
                ),
                // One a minute is below the threshold.
                (
                    "mongo_oidc_proxy_backend_errors_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",kind=\"relay\"}",
                    "0+1x40",
                ),
            ],
            quiet_at: "5m",
            firing_at: "20m",
            labels: &[&[
                ("severity", "warn"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("kind", "connect"),
            ]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyAuthFailureRatioHigh",
            series: &[
                (
                    "mongo_oidc_proxy_auth_attempts_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"success\",reason=\"\"}",
                    "0+30x40",
                ),
                (
                    "mongo_oidc_proxy_auth_attempts_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"failure\",reason=\"expired\"}",
                    "0+20x40",
                ),
                // Another fleet with a few failures among many sign-ins.
                (
                    "mongo_oidc_proxy_auth_attempts_total{instance=\"q1:9216\",job=\"other-proxies\",result=\"success\",reason=\"\"}",
                    "0+100x40",
                ),
                (
                    "mongo_oidc_proxy_auth_attempts_total{instance=\"q1:9216\",job=\"other-proxies\",result=\"failure\",reason=\"issuer\"}",
                    "0+5x40",
                ),
            ],
            quiet_at: "5m",
            firing_at: "20m",
            labels: &[&[("severity", "warn"), ("job", "mongo-oidc-proxy")]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyJwksStale",
            series: &[
                // Fetched at every sample: fresh.
                (
                    "mongo_oidc_proxy_jwks_last_success_timestamp_seconds{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",issuer=\"https://fresh.example.com\"}",
                    "0+60x100",
                ),
                // Last fetched at time 0.
                (
                    "mongo_oidc_proxy_jwks_last_success_timestamp_seconds{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",issuer=\"https://stale.example.com\"}",
                    "0x100",
                ),
            ],
            quiet_at: "62m",
            firing_at: "70m",
            labels: &[&[
                ("severity", "warn"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("issuer", "https://stale.example.com"),
            ]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyJwksEmpty",
            series: &[(
                "mongo_oidc_proxy_jwks_keys{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",issuer=\"https://idp.example.com\"}",
                "2 2 0x20",
            )],
            quiet_at: "6m",
            firing_at: "8m",
            labels: &[&[
                ("severity", "page"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("issuer", "https://idp.example.com"),
            ]],
            cleared_at: None,
        },
        Case {
            alert: "MongoOidcProxyAuditRecordsDropped",
            series: &[
                (
                    "mongo_oidc_proxy_audit_records_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"dropped\"}",
                    "0 0 0 5 5 5x20",
                ),
                (
                    "mongo_oidc_proxy_audit_records_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"written\"}",
                    "0+100x25",
                ),
            ],
            quiet_at: "2m",
            firing_at: "4m",
            labels: &[&[
                ("severity", "page"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("result", "dropped"),
            ]],
            cleared_at: Some("10m"),
        },
        Case {
            alert: "MongoOidcProxyConfigReloadFailed",
            series: &[
                (
                    "mongo_oidc_proxy_config_reloads_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"failure\"}",
                    "0 0 1x40",
                ),
                (
                    "mongo_oidc_proxy_config_reloads_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",result=\"success\"}",
                    "0 1x40",
                ),
            ],
            quiet_at: "1m",
            firing_at: "5m",
            labels: &[&[
                ("severity", "warn"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("result", "failure"),
            ]],
            cleared_at: Some("20m"),
        },
        Case {
            alert: "MongoOidcProxyConnectionLimit",
            series: &[
                (
                    "mongo_oidc_proxy_connections_rejected_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",reason=\"connection_limit\"}",
                    "0+5x30",
                ),
                (
                    "mongo_oidc_proxy_connections_rejected_total{instance=\"p1:9216\",job=\"mongo-oidc-proxy\",reason=\"tls_handshake\"}",
                    "0+5x30",
                ),
            ],
            quiet_at: "3m",
            firing_at: "10m",
            labels: &[&[
                ("severity", "warn"),
                ("instance", "p1:9216"),
                ("job", "mongo-oidc-proxy"),
                ("reason", "connection_limit"),
            ]],
            cleared_at: None,
        },
    ]
}

#[test]
fn every_alert_fires_when_it_should_and_not_before() {
    let by_name: Vec<(String, Value)> = alerts()
        .into_iter()
        .map(|a| (a["alert"].as_str().unwrap_or_default().to_owned(), a))
        .collect();
    let cases = cases();
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.alert).collect();
    let defined: BTreeSet<&str> = by_name.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        tested, defined,
        "every alert has a case here, and only those"
    );
    let mut tests = Vec::new();
    for c in &cases {
        let (_, rule) = by_name
            .iter()
            .find(|(n, _)| n == c.alert)
            .expect("alert defined");
        let firing: Vec<Value> = c
            .labels
            .iter()
            .map(|labels| {
                let l: serde_json::Map<String, Value> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({ "exp_labels": l, "exp_annotations": rule["annotations"] })
            })
            .collect();
        let mut evals = vec![
            json!({ "eval_time": c.quiet_at, "alertname": c.alert, "exp_alerts": [] }),
            json!({ "eval_time": c.firing_at, "alertname": c.alert, "exp_alerts": firing }),
        ];
        if let Some(at) = c.cleared_at {
            evals.push(json!({ "eval_time": at, "alertname": c.alert, "exp_alerts": [] }));
        }
        tests.push(json!({
            "name": c.alert,
            "interval": "1m",
            "input_series": c.series.iter().map(|(s, v)| json!({ "series": s, "values": v })).collect::<Vec<_>>(),
            "alert_rule_test": evals,
        }));
    }
    // YAML is a superset of JSON: promtool reads this test file as is.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rules.test.yml");
    let doc = json!({
        "rule_files": [repo().join(RULES).display().to_string()],
        "evaluation_interval": "1m",
        "tests": tests,
    });
    std::fs::write(&file, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The series the cases feed in are real metric names too.
    let series: Vec<String> = cases
        .iter()
        .flat_map(|c| c.series.iter().map(|(s, _)| s.to_string()))
        .collect();
    let rule_exprs: Vec<String> = by_name
        .iter()
        .map(|(_, r)| r["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(metric_names(&series), metric_names(&rule_exprs));
}

#[test]
fn the_dashboard_is_well_formed_and_covers_what_operators_watch() {
    let d = dashboard();
    assert_eq!(d["uid"], "mongo-oidc-proxy");
    assert!(d["schemaVersion"].as_i64().unwrap_or(0) >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let mut ids = BTreeSet::new();
    let mut panels = Vec::new();
    fn flatten(v: &Value, out: &mut Vec<Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p.clone());
            flatten(&p["panels"], out);
        }
    }
    flatten(&d["panels"], &mut panels);
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {p}");
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "duplicate id: {title}"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: filter by $instance: {expr}"
            );
        }
    }
    let names = metric_names(&dashboard_exprs(&d));
    for needed in [
        "mongo_oidc_proxy_auth_attempts_total",
        "mongo_oidc_proxy_auth_duration_seconds_bucket",
        "mongo_oidc_proxy_connections_active",
        "mongo_oidc_proxy_commands_total",
        "mongo_oidc_proxy_relayed_bytes_total",
        "mongo_oidc_proxy_backend_errors_total",
        "mongo_oidc_proxy_jwks_last_success_timestamp_seconds",
        "mongo_oidc_proxy_config_reloads_total",
        "mongo_oidc_proxy_ready",
        "mongo_oidc_proxy_audit_records_total",
    ] {
        assert!(
            names.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The names of the samples in a Prometheus text exposition.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_use_is_exported() {
    let idp = DevIdp::start("127.0.0.1:0".parse().expect("addr"), dev_idp_options())
        .await
        .expect("development IdP");
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let config = dir.path().join("proxy.toml");
    let text = proxy_env::config_text(idp.issuer(), "jwks_poll_secs = 10", "")
        .replace(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"127.0.0.1:{port}\""),
        )
        .replace(
            "[limits]",
            &format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n\n[limits]"),
        );
    std::fs::write(&config, &text).expect("write config");
    let p = ProxyProcess::start(&config, port).await;
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ca = shared_files().join("ca.pem");

    // A sign-in, a relayed command, a failed sign-in and a refused command.
    let mut c = WireClient::connect(addr, &ca).await;
    assert!(is_ok(
        &c.sign_in(&idp.token("alice", &["writers"], 600)).await
    ));
    let r = c
        .command(rawdoc! { "insert": "observability", "documents": [{ "x": 1 }], "$db": "app" })
        .await;
    assert!(is_ok(&r), "{r:?}");
    let mut other = WireClient::connect(addr, &ca).await;
    assert_eq!(
        error_of(&other.sign_in(&idp.token("bob", &["writers"], -5)).await).0,
        18
    );
    let refused = other
        .command(rawdoc! { "find": "observability", "$db": "app" })
        .await;
    assert_eq!(error_of(&refused).0, 13);
    // A client that does not speak TLS.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    drop(plain);
    // A reload.
    let before = p.count("configuration reloaded");
    p.signal("HUP");
    assert!(
        p.wait_for_more("configuration reloaded", before, Duration::from_secs(15))
            .await,
        "{}",
        p.log()
    );

    // The refused handshake is counted when the proxy notices the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (scraped, exported) = loop {
        let s = scrape(metrics).await;
        let names = sample_names(&s);
        if names.contains("mongo_oidc_proxy_connections_rejected_total")
            || tokio::time::Instant::now() > deadline
        {
            break (s, names);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut used = metric_names(&dashboard_exprs(&dashboard()));
    let rule_exprs: Vec<String> = alerts()
        .iter()
        .map(|r| r["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    used.extend(metric_names(&rule_exprs));
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "metrics used by {DASHBOARD} or {RULES} but not exported by the proxy: {missing:?}\n--- scrape ---\n{scraped}"
    );
}
