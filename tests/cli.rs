//! The command line as an operator uses it: `--help`, `check`,
//! and start-up refusals, each with its exit code and message.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::path::Path;
use std::process::{Command, Output};

fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"));
    cmd.args(args).env_remove("MONGO_OIDC_PROXY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mongo-oidc-proxy")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const CONFIG: &str = r#"
[listen]
address = "127.0.0.1:0"
tls_cert = "certs/server.pem"
tls_key = "certs/server.key"

[backend]
uri = "mongodb://127.0.0.1:1/"

[[identity_provider]]
issuer = "https://idp.example.com"
audience = "api://mongodb"
auth_name_prefix = "PREFIX"
client_id = "abc"

[[grant]]
role = "okta/dba"
backend_user = "dba"
backend_password_env = "MOP_CLI_TEST_PASSWORD"
"#;

fn write_config(dir: &Path, prefix: &str) -> String {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, CONFIG.replace("PREFIX", prefix)).unwrap();
    path.display().to_string()
}

#[test]
fn help_documents_every_command_and_flag() {
    let out = proxy(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in ["--config", "--log-format", "--log-level", "check", "token"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = proxy(&["check", "--help"], &[]);
    for needle in ["--sign-in <TOKEN_FILE>", "--client-address <IP>"] {
        assert!(
            text(&out.stdout).contains(needle),
            "check --help lacks {needle}"
        );
    }
    let out = proxy(&["token", "--help"], &[]);
    for needle in [
        "--idp <ISSUER_OR_PREFIX>",
        "--client-credentials",
        "--client-secret-env <VAR>",
        "--client-id <ID>",
        "--scope <SCOPE>",
    ] {
        assert!(
            text(&out.stdout).contains(needle),
            "token --help lacks {needle}"
        );
    }
}

#[test]
fn the_production_binary_carries_no_development_tools() {
    // The demo and development certificates are the devkit's binary.
    for sub in ["demo", "dev-certs"] {
        let out = proxy(&[sub, "--help"], &[]);
        assert!(!out.status.success(), "`{sub}` must not be a subcommand");
    }
    // Nor can it issue tokens: none of the development IdP is linked in.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_mongo-oidc-proxy")).unwrap();
    for needle in [&b"/demo/token"[..], b"mongo_oidc_proxy_devkit", b"devidp"] {
        assert!(
            !binary.windows(needle.len()).any(|w| w == needle),
            "the production binary contains {:?}",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn check_accepts_a_good_config_and_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "okta");
    // TLS files are checked too.
    let out = proxy(
        &["check", "--config", &good],
        &[("MOP_CLI_TEST_PASSWORD", "pw")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("listen.tls_cert: cannot read"),
        "{}",
        text(&out.stderr)
    );
    mongo_oidc_proxy_devkit::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
    let out = proxy(
        &["check", "--config", &good],
        &[("MOP_CLI_TEST_PASSWORD", "pw")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("OK (1 identity provider(s), 1 grant(s)"),
        "{}",
        text(&out.stdout)
    );

    // The password must be readable: check says which variable is missing.
    let out = proxy(&["check", "--config", &good], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "grant[0].backend_password_env: environment variable MOP_CLI_TEST_PASSWORD is not set"
        ),
        "{}",
        text(&out.stderr)
    );

    let bad = write_config(dir.path(), "foo.bar");
    let out = proxy(
        &["check", "--config", &bad],
        &[("MOP_CLI_TEST_PASSWORD", "pw")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: {bad}: identity_provider[0].auth_name_prefix:"
        )),
        "{err}"
    );

    let out = proxy(&["check", "--config", "/nonexistent/proxy.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read the config file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn running_needs_a_config_and_refuses_unreadable_certificates() {
    let out = proxy(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config FILE is required"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "okta");
    let out = proxy(&["--config", &cfg], &[("MOP_CLI_TEST_PASSWORD", "pw")]);
    // A refused config exits 2, as `check` does.
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("listen.tls_cert: cannot read") && err.contains("certs/server.pem"),
        "{err}"
    );
}

#[test]
fn check_loads_development_certificates_as_the_listeners_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    mongo_oidc_proxy_devkit::devcerts::generate(&out_dir, &[]).unwrap();
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    // `check` loads them as the listener's identity.
    let cfg = write_config(dir.path(), "okta");
    let out = proxy(
        &["check", "--config", &cfg],
        &[("MOP_CLI_TEST_PASSWORD", "pw")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A good config for the table below: certificates from dev-certs, an
/// issuer and a backend on loopback where nobody listens (start-up, if it
/// got that far, would only be refused a connection).
const TABLE_CONFIG: &str = r#"
[listen]
address = "127.0.0.1:0"
tls_cert = "certs/server.pem"
tls_key = "certs/server.key"

[backend]
uri = "mongodb://127.0.0.1:1/"

[[identity_provider]]
issuer = "http://127.0.0.1:9/"
audience = "api://mongodb"
auth_name_prefix = "okta"
client_id = "abc"

[[grant]]
role = "okta/dba"
backend_user = "dba"
backend_password_env = "MOP_CLI_TEST_PASSWORD"
"#;

/// Runs the binary (under `prlimit --nofile=N:N` when `nofile` is given),
/// killing it if it is still running after `limit`: a start-up that accepts
/// a config it should refuse runs until signalled.
fn run_bounded(
    args: &[&str],
    nofile: Option<u64>,
    limit: std::time::Duration,
) -> (Option<i32>, String) {
    use std::io::Read;
    let bin = env!("CARGO_BIN_EXE_mongo-oidc-proxy");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("/usr/bin/prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env_remove("MONGO_OIDC_PROXY_CONFIG")
        .env("MOP_CLI_TEST_PASSWORD", "pw")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run mongo-oidc-proxy");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (code, reader.join().unwrap())
}

/// Every config start-up must refuse, `check` refuses too, and both say so
/// with exit code 2 and one `field: message` naming the field once.
#[test]
fn check_and_start_up_refuse_the_same_configs() {
    let dir = tempfile::tempdir().unwrap();
    mongo_oidc_proxy_devkit::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
    let cert = dir.path().join("certs/server.pem").display().to_string();
    let uri = |uri: &str| TABLE_CONFIG.replace("mongodb://127.0.0.1:1/", uri);
    let backend_uri = "backend.uri";
    let scheme = "must start with mongodb:// (for example mongodb://127.0.0.1:27017/)";
    let listen_name = "'proxy.example.com:27017' is not an IP address and port; write one such \
                       as 0.0.0.0:27017 or 127.0.0.1:27017 (only localhost is accepted as a name)";
    // (what, config, prlimit --nofile, field, message)
    let rows: Vec<(&str, String, Option<u64>, &str, String)> =
        vec![
        ("not a URI", uri("not a uri"), None, backend_uri, scheme.into()),
        ("another scheme", uri("http://127.0.0.1:27017/"), None, backend_uri, scheme.into()),
        (
            "a bad port",
            uri("mongodb://h:99999"),
            None,
            backend_uri,
            "host 'h:99999': port '99999' is not a number from 1 to 65535".into(),
        ),
        (
            "credentials",
            uri("mongodb://u:p@h/"),
            None,
            backend_uri,
            "credentials in the URI are not supported; backend users and passwords come from \
             [[grant]] backend_user and backend_password_env. Remove 'user:password@'"
                .into(),
        ),
        (
            "an unknown option",
            uri("mongodb://h/?foo=1"),
            None,
            backend_uri,
            "unknown option 'foo'; supported: replicaSet, tls, ssl, tlsCAFile, \
             tlsCertificateKeyFile, directConnection, connectTimeoutMS"
                .into(),
        ),
        (
            "a missing tlsCAFile",
            uri("mongodb://127.0.0.1:1/?tls=true&tlsCAFile=/nonexistent.pem"),
            None,
            backend_uri,
            "tlsCAFile '/nonexistent.pem' cannot be read: No such file or directory (os error 2)"
                .into(),
        ),
        (
            "a grant prefix matching no IdP",
            TABLE_CONFIG.replace("role = \"okta/dba\"", "role = \"okt/dba\""),
            None,
            "grant[0].role",
            "prefix 'okt' of 'okt/dba' matches no identity provider's auth_name_prefix \
             (configured: 'okta'); a role is named '<auth_name_prefix>/<group>': correct the \
             prefix, or add an [[identity_provider]] with auth_name_prefix = \"okt\""
                .into(),
        ),
        (
            "a tls_key holding no key",
            TABLE_CONFIG.replace("certs/server.key", "certs/server.pem"),
            None,
            "listen.tls_key",
            format!("{cert} holds no PEM private key"),
        ),
        (
            "max_connections above the fd limit",
            format!("{TABLE_CONFIG}\n[limits]\nmax_connections = 1000\n"),
            Some(256),
            "limits.max_connections",
            "1000 connections need up to 2064 file descriptors (2 per connection plus 64 \
             reserved), but this process may open only 256 (soft limit 256, raised to the hard \
             limit 256); lower max_connections to at most 96, or raise the limit to at least \
             2064: `ulimit -n 2064` in the shell that starts the proxy, or LimitNOFILE=2064 in \
             its systemd unit"
                .into(),
        ),
        (
            "a listen.address host name",
            TABLE_CONFIG.replace("127.0.0.1:0", "proxy.example.com:27017"),
            None,
            "listen.address",
            listen_name.into(),
        ),
        (
            "a metrics.address host name",
            format!("{TABLE_CONFIG}\n[metrics]\naddress = \"metrics.example.com:9216\"\n"),
            None,
            "metrics.address",
            "'metrics.example.com:9216' is not an IP address and port; write one such as \
             0.0.0.0:9216 or 127.0.0.1:9216 (only localhost is accepted as a name)"
                .into(),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, nofile, field, message)) in rows.iter().enumerate() {
        let path = dir.path().join(format!("row{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let file = path.display().to_string();
        let want = format!("{field}: {message}");
        for (how, args) in [
            ("check", vec!["check", "--config", &file]),
            ("start-up", vec!["--config", &file]),
        ] {
            let (code, stderr) = run_bounded(&args, *nofile, std::time::Duration::from_secs(8));
            let named = stderr.matches(field).count();
            if code != Some(2) || !stderr.contains(&want) || named != 1 {
                let head: Vec<&str> = stderr.lines().take(4).collect();
                failures.push(format!(
                    "{how} with {what}: exit {code:?} (want 2, None = still running after the \
                     deadline), {field} named {named} time(s) (want 1), want stderr to contain\n    \
                     {want}\n  stderr begins:\n    {}",
                    head.join("\n    ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs did not refuse as they should:\n{}",
        failures.len(),
        rows.len() * 2,
        failures.join("\n")
    );
}

#[test]
fn check_accepts_localhost_as_the_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    mongo_oidc_proxy_devkit::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, TABLE_CONFIG.replace("127.0.0.1:0", "localhost:0")).unwrap();
    let file = path.display().to_string();
    let out = proxy(
        &["check", "--config", &file],
        &[("MOP_CLI_TEST_PASSWORD", "pw")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("listening on 127.0.0.1:0"),
        "{}",
        text(&out.stdout)
    );
    // What check accepts, start-up accepts: the proxy listens.
    assert!(
        starts_listening(&file, &[("MOP_CLI_TEST_PASSWORD", "pw")]),
        "check accepted a config that start-up refused"
    );
}

/// Runs the proxy and reports whether it got as far as listening; kills it.
fn starts_listening(config: &str, env: &[(&str, &str)]) -> bool {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"));
    cmd.args(["--config", config])
        .env_remove("MONGO_OIDC_PROXY_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run mongo-oidc-proxy");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("mongo-oidc-proxy listening") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    listening
}

#[test]
fn check_refuses_a_scram_set_up_user_without_test_commands_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    mongo_oidc_proxy_devkit::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
    let path = dir.path().join("proxy.toml");
    let base = CONFIG
        .replace("PREFIX", "okta")
        .replace("[[grant]]\n", "[[grant]]\nname = \"setup\"\nadmin = true\n");
    let with = |testing: &str| {
        std::fs::write(&path, format!("{base}\n[testing]\n{testing}\n")).unwrap();
        path.display().to_string()
    };
    let user = "setup_user = \"setup\"\nsetup_password_env = \"MOP_CLI_SETUP_PASSWORD\"\nsetup_grant = \"setup\"";
    let env = [
        ("MOP_CLI_TEST_PASSWORD", "pw"),
        ("MOP_CLI_SETUP_PASSWORD", "setup-pw"),
    ];
    let out = proxy(&["check", "--config", &with(user)], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "testing.setup_user: a SCRAM set-up user is a test-only back door: it needs \
             testing.enable_test_commands = true, and must never be set in production"
        ),
        "{}",
        text(&out.stderr)
    );
    let on = format!("enable_test_commands = true\n{user}");
    let out = proxy(&["check", "--config", &with(&on)], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = proxy(
        &["check", "--config", &with(&on)],
        &[
            ("MOP_CLI_TEST_PASSWORD", "pw"),
            ("MOP_CLI_SETUP_PASSWORD", "pässword"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "testing.setup_password_env: the password must be non-empty printable ASCII: \
             SASLprep for other characters is not implemented"
        ),
        "{}",
        text(&out.stderr)
    );
}
