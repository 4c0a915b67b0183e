//! The demo binary's command line: `--help` and `dev-certs`.

use std::process::{Command, Output};

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy-demo"))
        .args(args)
        .output()
        .expect("run mongo-oidc-proxy-demo")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_documents_the_demo_and_dev_certs() {
    let out = demo(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in ["--backend-uri", "--listen", "dev-certs", "--log-level"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn dev_certs_writes_a_ca_server_and_client_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = demo(&["dev-certs", "--out", &out_dir.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("wrote development certificates to"));
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
}
