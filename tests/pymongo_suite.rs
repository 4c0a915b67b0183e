//! pymongo's own MONGODB-OIDC test modules, unmodified, against the proxy.
//!
//! `test/test_auth_oidc.py` and `test/asynchronous/test_auth_oidc.py` from
//! the pymongo sdist (the version pinned in scripts/tools-requirements.txt,
//! unpacked by scripts/setup-tools.sh into `.tools/pymongo-suite/`) implement
//! the MongoDB specification's MONGODB-OIDC prose tests and run its unified
//! test file `test/auth/unified/mongodb-oidc-no-retry.json`. They expect the
//! specification's local test set-up (drivers-evergreen-tools'
//! `.evergreen/auth_oidc/`), which this harness rebuilds around two proxies:
//!
//! - two identity providers (issuers 1 and 2, development IdPs here) and
//!   their token files in `OIDC_TOKEN_DIR`: `test_user1` (issuer 1),
//!   `test_user2` and `test_machine` (issuer 2), each with `_1`, `_2` and a
//!   60-second `_expires` variant, carrying the claims `foo` and `bar`;
//! - `MONGODB_URI_SINGLE`: a proxy with the set-up's first server's
//!   `oidcIdentityProviders`, pasted as `identity_providers_json` (issuer 1
//!   for humans whose name matches `test_user1`, issuer 2 for machines);
//!   `MONGODB_URI_MULTI`: one with the second server's (both issuers for
//!   humans, chosen by `matchPattern`);
//! - `MONGODB_URI`: the admin connection the tests set fail points with,
//!   signed in as `test_machine` (`ENVIRONMENT:test`), whose grant has
//!   `admin = true`; both proxies run with `[testing] enable_test_commands`;
//! - `DB_IP`/`DB_PORT`/`DB_USER`/`DB_PASSWORD`: pymongo's own test set-up
//!   (`client_context`, which the unified tests' runner uses for fail points
//!   and `initialData`) signs in with SCRAM-SHA-256 as the first proxy's
//!   test-only set-up user (`[testing] setup_user`), mapped to that same
//!   admin grant, as the specification's test servers accept SCRAM for it.
//!
//! The tests' clients name themselves `appName=auth_oidc` (the application
//! name the modules' fail points are scoped to, `OIDC_APP_NAME`'s default),
//! given in the URIs. SecantusDB is the backend. The run must end with no
//! failure, and exactly the skips listed in [`EXPECTED_SKIPS`]
//! (README.md, "pymongo's OIDC test suite", says why each is skipped).

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use mongo_oidc_proxy_devkit::devidp::{DevAlg, DevIdp, DevIdpOptions};
use serde_json::{json, Value};
use support::proxy_env::shared_files;
use support::proxy_process::ProxyProcess;
use support::{clients_dir, free_port, run_command, start_secantus, tools_dir};
use tokio::process::Command;

/// The pymongo release whose tests run (scripts/tools-requirements.txt pins it).
const PYMONGO_VERSION: &str = "4.20.0";
/// The set-up's client id, which is also the tokens' audience.
const CLIENT_ID: &str = "0oadp0hpl7q3UIehP297";
/// The domain of the human users' names (`test_user1@<domain>`).
const DOMAIN: &str = "mongo-oidc-proxy.test";
/// The application name the test modules scope their fail points to.
const APP_NAME: &str = "auth_oidc";
/// The whole pytest run; it takes about 35 s on 2 cores.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

const RW: (&str, &str) = ("oidc_suite_rw", "oidc-suite-rw-password");
const ADMIN: (&str, &str) = ("oidc_suite_admin", "oidc-suite-admin-password");
/// pymongo's set-up user (`DB_USER`/`DB_PASSWORD`), the proxy's test-only
/// SCRAM user. Its harness looks `DB_USER` up with `usersInfo` (relayed, as
/// the admin grant's backend user) and creates it when absent, which the
/// unauthenticated client it uses for that cannot: so it bears the name of
/// the backend user its grant relays as.
const SETUP: (&str, &str) = (ADMIN.0, "oidc-suite-setup-password");

/// Tests skipped against the proxy, in both modules: `Class::test` (`*`: every
/// test of the class) and a fragment of the reason pytest reports.
const EXPECTED_SKIPS: &[(&str, &str)] = &[
    // Need an Azure VM (OIDC_ENV=azure); skipped by the suite itself.
    (
        "TestAuthOIDCMachine::test_5_1_azure_with_no_username",
        "Test is only supported on Azure",
    ),
    (
        "TestAuthOIDCMachine::test_5_2_azure_with_bad_username",
        "Test is only supported on Azure",
    ),
];

/// Tests that fail against every mongos, in both modules, with the failure.
/// This one checks for a mongos the wrong way round (it skips on anything
/// else), and its first client, used for that check, already calls the
/// callback its count then asserts was called once.
const EXPECTED_FAILURES: &[(&str, &str)] = &[(
    "TestAuthOIDCHuman::test_reauthenticate_succeeds_get_more_exhaust",
    "AssertionError: 2 != 1",
)];

/// The set-up's first server: issuer 1 for human flows (`test_user1`),
/// issuer 2 for machine flows only.
fn single_idps(issuer1: &str, issuer2: &str) -> Value {
    json!([
        {
            "authNamePrefix": "test1", "issuer": issuer1, "clientId": CLIENT_ID,
            "audience": CLIENT_ID, "authorizationClaim": "foo",
            "requestScopes": ["fizz", "buzz"], "matchPattern": "test_user1",
        },
        {
            "authNamePrefix": "test2", "issuer": issuer2, "clientId": CLIENT_ID,
            "audience": CLIENT_ID, "authorizationClaim": "bar",
            "supportsHumanFlows": false, "requestScopes": ["foo", "bar"],
        },
    ])
}

/// The set-up's second server: both issuers for human flows.
fn multi_idps(issuer1: &str, issuer2: &str) -> Value {
    let mut idps = single_idps(issuer1, issuer2);
    if let Some(second) = idps.get_mut(1).and_then(Value::as_object_mut) {
        second.remove("supportsHumanFlows");
        second.insert("matchPattern".into(), json!("test_user2"));
    }
    idps
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn config(port: u16, idps: &Value, backend: &str, dir: &Path) -> String {
    let files = shared_files();
    let path = |p: PathBuf| toml_str(&p.display().to_string());
    format!(
        "identity_providers_json = '''{idps}'''\n\n\
         [listen]\naddress = \"127.0.0.1:{port}\"\ntls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nuri = {backend}\n\n\
         [testing]\nenable_test_commands = true\nsetup_user = {setup}\nsetup_password_file = {setup_pw}\nsetup_grant = \"suite-admin\"\n\n\
         [[grant]]\nname = \"suite-admin\"\nuser = \"test2/test_machine\"\nbackend_user = {admin}\nbackend_password_file = {admin_pw}\nadmin = true\n\n\
         [[grant]]\nrole = \"test1/readWrite\"\nbackend_user = {rw}\nbackend_password_file = {rw_pw}\n\n\
         [[grant]]\nrole = \"test2/readWrite\"\nbackend_user = {rw}\nbackend_password_file = {rw_pw}\n",
        cert = path(files.join("server.pem")),
        key = path(files.join("server.key")),
        backend = toml_str(backend),
        admin = toml_str(ADMIN.0),
        admin_pw = path(dir.join("admin.password")),
        rw = toml_str(RW.0),
        rw_pw = path(dir.join("rw.password")),
        setup = toml_str(SETUP.0),
        setup_pw = path(dir.join("setup.password")),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// drivers-evergreen-tools' `oidc_get_tokens.py`: ID tokens of the set-up's
/// IdPs, valid for a day (`_expires`: a minute), with the claims `foo` and
/// `bar` that the IdPs' `authorizationClaim`s read.
fn write_tokens(dir: &Path, base: &str, idp: &DevIdp, sub: &str) {
    let token = |ttl: i64| {
        let iat = now();
        idp.sign(
            DevAlg::Rs256,
            &json!({
                "iss": idp.issuer(), "sub": sub, "aud": CLIENT_ID,
                "iat": iat, "auth_time": iat, "exp": iat + ttl,
                "foo": ["readWrite"], "bar": ["readWrite"],
            }),
        )
    };
    let day = 24 * 60 * 60;
    for (name, ttl) in [
        (base.to_owned(), day),
        (format!("{base}_1"), day),
        (format!("{base}_2"), day),
        (format!("{base}_expires"), 60),
    ] {
        std::fs::write(dir.join(name), token(ttl)).expect("write token file");
    }
}

fn uri(port: u16, extra: &str) -> String {
    format!(
        "mongodb://localhost:{port}/?tls=true&tlsCAFile={}&{extra}",
        shared_files().join("ca.pem").display()
    )
}

#[derive(Debug, Default)]
struct Results {
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    skipped: Vec<(String, String)>,
    seconds: f64,
}

fn parse_results(v: &Value) -> Results {
    let strings = |key: &str, a: &str, b: &str| -> Vec<(String, String)> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                        (s(a), s(b))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Results {
        passed: v
            .get("passed")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        failed: strings("failed", "id", "message"),
        skipped: strings("skipped", "id", "reason"),
        seconds: v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
    }
}

/// Whether a test id (`[async/]module::Class::test`) is one of `expected`
/// with a message containing the listed fragment.
fn is_expected(expected: &[(&str, &str)], id: &str, message: &str) -> bool {
    let class_test = id.split_once("::").map_or(id, |(_, rest)| rest);
    expected.iter().any(|(pattern, fragment)| {
        let matches = match pattern.strip_suffix("::*") {
            Some(class) => class_test.split_once("::").is_some_and(|(c, _)| c == class),
            None => class_test == *pattern,
        };
        matches && message.contains(fragment)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_oidc_test_modules_pass_against_the_proxy() {
    let started = Instant::now();
    let tools = tools_dir();
    let suite = tools
        .join("pymongo-suite")
        .join(format!("pymongo-{PYMONGO_VERSION}"));
    assert!(
        suite.join("test/test_auth_oidc.py").exists()
            && suite.join("test/asynchronous/test_auth_oidc.py").exists(),
        "pymongo {PYMONGO_VERSION}'s test suite is missing from {}; run scripts/setup-tools.sh",
        suite.display()
    );
    let python = tools.join("venv/bin/python");

    let backend = start_secantus(vec![
        BackendUser::new(RW.0, RW.1, &[("readWrite", "test")]),
        BackendUser::new(ADMIN.0, ADMIN.1, &[("root", "admin")]),
    ])
    .await;

    let opts = DevIdpOptions {
        client_id: CLIENT_ID.into(),
        audience: CLIENT_ID.into(),
        ..DevIdpOptions::default()
    };
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let issuer1 = DevIdp::start(loopback, opts.clone()).await.expect("IdP 1");
    let issuer2 = DevIdp::start(loopback, opts).await.expect("IdP 2");

    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("token dir");
    write_tokens(
        &tokens,
        "test_user1",
        &issuer1,
        &format!("test_user1@{DOMAIN}"),
    );
    write_tokens(
        &tokens,
        "test_user2",
        &issuer2,
        &format!("test_user2@{DOMAIN}"),
    );
    write_tokens(&tokens, "test_machine", &issuer2, "test_machine");
    std::fs::write(dir.path().join("rw.password"), RW.1).expect("password file");
    std::fs::write(dir.path().join("admin.password"), ADMIN.1).expect("password file");
    std::fs::write(dir.path().join("setup.password"), SETUP.1).expect("password file");

    let (single_port, multi_port) = (free_port(), free_port());
    let single_cfg = dir.path().join("single.toml");
    let multi_cfg = dir.path().join("multi.toml");
    let (i1, i2) = (issuer1.issuer(), issuer2.issuer());
    std::fs::write(
        &single_cfg,
        config(single_port, &single_idps(i1, i2), &backend.uri, dir.path()),
    )
    .expect("write config");
    std::fs::write(
        &multi_cfg,
        config(multi_port, &multi_idps(i1, i2), &backend.uri, dir.path()),
    )
    .expect("write config");
    let single = ProxyProcess::start(&single_cfg, single_port).await;
    let multi = ProxyProcess::start(&multi_cfg, multi_port).await;
    assert_eq!(
        single.count("test commands are enabled ([testing] enable_test_commands = true)"),
        1,
        "the start-up warning:\n{}",
        single.log()
    );

    let admin_uri = uri(
        single_port,
        "authMechanism=MONGODB-OIDC&authMechanismProperties=ENVIRONMENT:test",
    );
    let app = format!("authMechanism=MONGODB-OIDC&appName={APP_NAME}");
    let token_file = tokens.join("test_machine");
    let report = dir.path().join("results.xml");
    let mut cmd = Command::new(&python);
    cmd.current_dir(&suite)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-m", "auth_oidc"])
        .arg(format!("--junitxml={}", report.display()))
        .args([
            "test/test_auth_oidc.py",
            "test/asynchronous/test_auth_oidc.py",
        ])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MONGODB_URI", &admin_uri)
        // pymongo's own test set-up (client_context) finds authentication
        // on and signs in with SCRAM as DB_USER/DB_PASSWORD: the proxy's
        // set-up user. Over TLS with the proxy's CA and no client
        // certificate (CLIENT_PEM empty).
        .env("DB_IP", "localhost")
        .env("DB_PORT", single_port.to_string())
        .env("DB_USER", SETUP.0)
        .env("DB_PASSWORD", SETUP.1)
        .env("CA_PEM", shared_files().join("ca.pem"))
        .env("CLIENT_PEM", "")
        .env("MONGODB_URI_SINGLE", uri(single_port, &app))
        .env("MONGODB_URI_MULTI", uri(multi_port, &app))
        .env("OIDC_TOKEN_DIR", &tokens)
        .env("OIDC_TOKEN_FILE", &token_file)
        .env("OIDC_DOMAIN", DOMAIN)
        .env("OIDC_IS_LOCAL", "1")
        .env_remove("OIDC_ENV")
        .env_remove("OIDC_APP_NAME");
    let out = run_command(cmd, "pytest (pymongo OIDC suite)".into(), SUITE_TIMEOUT).await;
    assert!(
        report.exists(),
        "pytest wrote no report:\n{out}\n--- proxy (single) ---\n{}",
        single.log()
    );
    let summary = support::run_python(
        &clients_dir().join("junit_summary.py"),
        &[report.to_str().expect("utf-8 path")],
        &[],
    )
    .await;
    let results = parse_results(&summary.expect_ok());
    let elapsed = started.elapsed();

    eprintln!(
        "pymongo {PYMONGO_VERSION} OIDC suite: {} passed, {} failed, {} skipped; pytest {:.0} s, harness {:.0} s",
        results.passed.len(),
        results.failed.len(),
        results.skipped.len(),
        results.seconds,
        elapsed.as_secs_f64()
    );
    for (id, reason) in &results.skipped {
        eprintln!("  skipped {id}: {reason}");
    }
    for (id, message) in &results.failed {
        eprintln!("  FAILED {id}:\n{message}\n");
    }
    let fired = single.count("Activating 'failCommand' failpoint");
    let set = single.count("Set failpoint failCommand");
    eprintln!("  fail points set: {set}, fired: {fired}");
    let log = single.log();
    let scram = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("scram_setup_user"))
            .count()
    };
    let (scram_ok, scram_failed) = (scram("\"signed in\""), scram("authentication failed"));
    eprintln!("  set-up user SCRAM sign-ins: {scram_ok}, failed: {scram_failed}");
    let unexpected_skips: Vec<&(String, String)> = results
        .skipped
        .iter()
        .filter(|(id, reason)| !is_expected(EXPECTED_SKIPS, id, reason))
        .collect();
    let unexpected_failures: Vec<&str> = results
        .failed
        .iter()
        .filter(|(id, message)| !is_expected(EXPECTED_FAILURES, id, message))
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        unexpected_failures.is_empty() && unexpected_skips.is_empty(),
        "pymongo's OIDC suite against the proxy: unexpected failures {unexpected_failures:?}, \
         unexpected skips {unexpected_skips:?}\n--- pytest output (tail) ---\n{}\n\
         --- proxy (single) log (tail) ---\n{}",
        tail(&out.stdout, 20_000),
        tail(&single.log(), 20_000),
    );
    // Both modules: 47 prose tests and the unified file's 6 each; 2 Azure
    // skips and 1 defective test each.
    assert_eq!(
        (
            results.passed.len(),
            results.failed.len(),
            results.skipped.len()
        ),
        (100, 2, 4),
        "passed, failed, skipped"
    );
    assert!(
        scram_ok >= 1 && scram_failed == 0,
        "pymongo's set-up client signed in as the SCRAM set-up user ({scram_ok}) and never failed ({scram_failed})"
    );
    assert!(
        set >= 40 && fired >= 40,
        "the suite's fail points were set ({set}) and fired ({fired}) on the proxy"
    );
    drop(multi);
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}
