//! The command line as an operator uses it: `--help`, `check`, `dev-certs`,
//! and start-up refusals, each with its exit code and message.

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
    for needle in [
        "--config",
        "--log-format",
        "--log-level",
        "check",
        "dev-certs",
        "demo",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = proxy(&["demo", "--help"], &[]);
    assert!(text(&out.stdout).contains("--backend-uri"));
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
    mongo_oidc_proxy::devcerts::generate(&dir.path().join("certs"), &[]).unwrap();
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
fn dev_certs_writes_a_usable_ca_and_server_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = proxy(&["dev-certs", "--out", &out_dir.display().to_string()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
