//! Testing one's own setup from the command line, with the real binary:
//! `token` gets an access token from a configured identity provider (the
//! development IdP and MongoDB's oidc-mock-provider; device flow and client
//! credentials), and `check --sign-in` says what the proxy makes of a token
//! — the grant, or exactly why it refuses — without starting the proxy.

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
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongo_oidc_proxy_devkit::devidp::{DevIdp, DevIdpOptions};
use serde_json::json;
use support::proxy_env::{shared_files, AUDIENCE};
use support::{free_port, jwt_claims, MockIdp};
use tokio::io::AsyncWriteExt;

const AUTH_FAILED: &str = "a client sending it gets AuthenticationFailed (18)";
const NO_COMMANDS: &str =
    "every command but hello, ping and the SASL commands would get Unauthorized (13)";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs the binary without blocking the runtime that serves the IdP it asks.
async fn proxy(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"));
    cmd.args(args)
        .env_remove("MONGO_OIDC_PROXY_CONFIG")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start mongo-oidc-proxy");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("mongo-oidc-proxy {args:?} did not finish within 60 s"))
        .expect("wait for mongo-oidc-proxy");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A config trusting `idps` (TOML tables) with grants for `test/writers`
/// and `admins` (an admin grant). The backend is never contacted by these
/// commands.
fn write_config(dir: &Path, idps: &str) -> PathBuf {
    write_config_with(dir, idps, "test/admins")
}

fn write_config_with(dir: &Path, idps: &str, admins: &str) -> PathBuf {
    let files = shared_files();
    let rw = toml_str(&files.join("rw.password").display().to_string());
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nuri = \"mongodb://127.0.0.1:1/\"\n\n{idps}\n\
         [[grant]]\nrole = \"test/writers\"\nbackend_user = \"app_rw\"\nbackend_password_file = {rw}\n\n\
         [[grant]]\nrole = {admins:?}\nbackend_user = \"app_ro\"\nbackend_password_file = {rw}\nadmin = true\n",
        cert = toml_str(&files.join("server.pem").display().to_string()),
        key = toml_str(&files.join("server.key").display().to_string()),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn dev_idp_table(issuer: &str, extra: &str) -> String {
    format!(
        "[[identity_provider]]\nissuer = {}\naudience = {}\nauth_name_prefix = \"test\"\n\
         client_id = \"test-client\"\nrequest_scopes = [\"openid\", \"mongodb\"]\n{extra}\n",
        toml_str(issuer),
        toml_str(AUDIENCE)
    )
}

fn dev_options(sub: &str) -> DevIdpOptions {
    DevIdpOptions {
        audience: AUDIENCE.into(),
        client_id: "test-client".into(),
        default_sub: sub.into(),
        default_claims: json!({ "groups": ["writers"] }),
        ..DevIdpOptions::default()
    }
}

async fn dev_idp(opts: DevIdpOptions) -> DevIdp {
    DevIdp::start("127.0.0.1:0".parse().expect("addr"), opts)
        .await
        .expect("development IdP")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn ok_line(config: &Path, idps: usize) -> String {
    format!(
        "{}: OK ({idps} identity provider(s), 2 grant(s), listening on 127.0.0.1:0)",
        config.display()
    )
}

/// Checks the report line by line; `expires:` is checked against the token.
fn assert_report(run: &Run, config: &Path, idps: usize, token: &str, expected: &[&str]) {
    assert_eq!(run.code, Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(ok_line(config, idps).as_str()),
        "{run}"
    );
    let exp = jwt_claims(token)["exp"].as_u64().expect("exp");
    let expires = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.insert(3, format!("expires: {expires} (in "));
    assert_eq!(lines.len(), want.len() + 1, "{run}");
    for (got, want) in lines.iter().skip(1).zip(&want) {
        if want.ends_with("(in ") {
            assert!(got.starts_with(want.as_str()), "{got:?} vs {want:?}\n{run}");
            let left: u64 = got[want.len()..]
                .trim_end_matches(" s)")
                .parse()
                .expect("seconds left");
            assert!(left <= exp.saturating_sub(now()) + 1, "{run}");
        } else {
            assert_eq!(got, want, "{run}");
        }
    }
    assert_eq!(run.stderr, "", "{run}");
}

fn is_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && !s.contains(char::is_whitespace)
}

#[tokio::test]
async fn a_device_flow_token_from_the_dev_idp_is_accepted_with_its_grant() {
    let idp = dev_idp(dev_options("alice")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &dev_idp_table(idp.issuer(), ""));
    let cfg = config.display().to_string();

    let got = proxy(&["token", "--config", &cfg], &[], None).await;
    assert_eq!(got.code, Some(0), "{got}");
    let token = got.stdout.trim_end_matches('\n');
    assert!(
        is_jwt(token) && got.stdout.lines().count() == 1,
        "only the token on stdout: {got}"
    );
    let first = got.stderr.lines().next().unwrap_or_default();
    let prefix = format!(
        "To sign in, open {}/verify-device and enter the code ",
        idp.issuer()
    );
    assert!(first.starts_with(&prefix), "{got}");
    let code = &first[prefix.len()..];
    assert!(
        code.len() == 9 && code.as_bytes()[4] == b'-',
        "a user code: {got}"
    );
    assert!(
        got.stderr
            .contains("waiting for the sign-in (polling every 1 s, for at most 600 s) ..."),
        "{got}"
    );
    let claims = jwt_claims(token);
    assert_eq!(
        claims["scope"], "openid mongodb",
        "request_scopes were asked for"
    );
    assert_eq!(claims["client_id"], "test-client");

    let file = dir.path().join("token.jwt");
    std::fs::write(&file, &got.stdout).expect("write token");
    let checked = proxy(
        &[
            "check",
            "--config",
            &cfg,
            "--sign-in",
            &file.display().to_string(),
        ],
        &[],
        None,
    )
    .await;
    let expected = [
        format!(
            "token: accepted by identity_provider[0] (auth_name_prefix test, issuer {})",
            idp.issuer()
        ),
        "user: test/alice".into(),
        "roles: test/writers".into(),
        "grant: grant[0]: backend user app_rw, admin false".into(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_report(&checked, &config, 1, token, &expected);

    // The token may come on standard input, and a client address decides exactly.
    let piped = proxy(
        &[
            "check",
            "--config",
            &cfg,
            "--sign-in",
            "-",
            "--client-address",
            "10.9.8.7",
        ],
        &[],
        Some(&got.stdout),
    )
    .await;
    assert_eq!(piped.code, Some(0), "{piped}");
    assert!(
        piped.stdout.ends_with(
            "grant: grant[0]: backend user app_rw, admin false (for a client from 10.9.8.7)\n"
        ),
        "{piped}"
    );
}

#[tokio::test]
async fn the_device_flow_polls_at_the_interval_and_slows_down_when_asked() {
    let idp = dev_idp(DevIdpOptions {
        device_poll_answers: vec!["authorization_pending".into(), "slow_down".into()],
        ..dev_options("bob")
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &dev_idp_table(idp.issuer(), ""));
    let got = proxy(
        &["token", "--config", &config.display().to_string()],
        &[],
        None,
    )
    .await;
    assert_eq!(got.code, Some(0), "{got}");
    assert!(is_jwt(got.stdout.trim()), "{got}");
    assert!(
        got.stderr.contains(
            "the identity provider asked to poll more slowly (slow_down); polling every 6 s"
        ),
        "{got}"
    );
    // interval 1 s: 1 s → pending, 1 s → slow_down, then 1 + 5 s → the token.
    assert!(
        got.took >= Duration::from_secs(8) && got.took < Duration::from_secs(20),
        "{got}"
    );
}

#[tokio::test]
async fn a_device_flow_token_from_the_mock_idp_is_accepted_with_its_grant() {
    let mock = MockIdp::start(
        json!({ "sub": "mia", "groups": ["mockers"], "aud": "resource-server-audience-value" }),
        3600,
    )
    .await;
    let dev = dev_idp(dev_options("alice")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let idps = format!(
        "{}[[identity_provider]]\nissuer = {}\naudience = \"resource-server-audience-value\"\n\
         auth_name_prefix = \"mock\"\nclient_id = \"mongosh-test\"\nrequest_scopes = [\"mongodb-api\"]\nmatch_pattern = \"@mock$\"\n",
        dev_idp_table(dev.issuer(), "match_pattern = \"@dev$\""),
        toml_str(&mock.issuer())
    );
    let config = write_config_with(dir.path(), &idps, "mock/mockers");
    let cfg = config.display().to_string();

    // Two IdPs: the command must be told which.
    let which = proxy(&["token", "--config", &cfg], &[], None).await;
    assert_eq!(which.code, Some(2), "{which}");
    assert_eq!(
        which.stderr,
        format!(
            "error: {cfg}: the config has 2 identity providers; choose one with --idp ISSUER_OR_PREFIX: \
             identity_provider[0] (auth_name_prefix test, issuer {}), \
             identity_provider[1] (auth_name_prefix mock, issuer {})\n",
            dev.issuer(),
            mock.issuer()
        )
    );

    let got = proxy(&["token", "--config", &cfg, "--idp", "mock"], &[], None).await;
    assert_eq!(got.code, Some(0), "{got}");
    assert!(
        got.stderr.starts_with(&format!(
            "To sign in, open {}/verify-device and enter the code ",
            mock.issuer()
        )),
        "{got}"
    );
    let token = got.stdout.trim_end_matches('\n');
    assert!(is_jwt(token), "{got}");
    assert_eq!(jwt_claims(token)["client_id"], "mongosh-test");
    let checked = proxy(
        &["check", "--config", &cfg, "--sign-in", "-"],
        &[],
        Some(token),
    )
    .await;
    let expected = [
        format!(
            "token: accepted by identity_provider[1] (auth_name_prefix mock, issuer {})",
            mock.issuer()
        ),
        "user: mock/mia".into(),
        "roles: mock/mockers".into(),
        "grant: grant[1]: backend user app_ro, admin true".into(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_report(&checked, &config, 2, token, &expected);

    // By issuer too.
    let got = proxy(
        &["token", "--config", &cfg, "--idp", &mock.issuer()],
        &[],
        None,
    )
    .await;
    assert_eq!(got.code, Some(0), "{got}");
}

#[tokio::test]
async fn a_client_credentials_token_is_accepted_and_a_wrong_secret_refused() {
    let idp = dev_idp(DevIdpOptions {
        client_secret: Some("s3cret:with&odd=chars".into()),
        ..dev_options("unused")
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &dev_idp_table(idp.issuer(), ""));
    let cfg = config.display().to_string();
    let args = [
        "token",
        "--config",
        &cfg,
        "--client-credentials",
        "--client-secret-env",
        "MOP_TEST_CLIENT_SECRET",
    ];

    let got = proxy(
        &args,
        &[("MOP_TEST_CLIENT_SECRET", "s3cret:with&odd=chars")],
        None,
    )
    .await;
    assert_eq!(got.code, Some(0), "{got}");
    assert_eq!(
        got.stderr, "got an access token (expires in 3600 s)\n",
        "{got}"
    );
    let token = got.stdout.trim_end_matches('\n');
    assert_eq!(
        jwt_claims(token)["sub"],
        "test-client",
        "sub is the client: {got}"
    );
    let checked = proxy(
        &["check", "--config", &cfg, "--sign-in", "-"],
        &[],
        Some(token),
    )
    .await;
    let expected = [
        format!(
            "token: accepted by identity_provider[0] (auth_name_prefix test, issuer {})",
            idp.issuer()
        ),
        "user: test/test-client".into(),
        "roles: test/writers".into(),
        "grant: grant[0]: backend user app_rw, admin false".into(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_report(&checked, &config, 1, token, &expected);

    let wrong = proxy(&args, &[("MOP_TEST_CLIENT_SECRET", "guess")], None).await;
    assert_eq!(wrong.code, Some(1), "{wrong}");
    assert_eq!(
        wrong.stderr,
        format!(
            "error: {} (client credentials): the identity provider refused the client credentials grant: \
             invalid_client: client authentication failed\n",
            idp.issuer()
        )
    );
    assert_eq!(wrong.stdout, "");

    let unset = proxy(&args, &[], None).await;
    assert_eq!(unset.code, Some(2), "{unset}");
    assert_eq!(
        unset.stderr,
        "error: --client-secret-env: environment variable MOP_TEST_CLIENT_SECRET is not set or empty; \
         export the client's secret in it\n"
    );
    let no_var = proxy(
        &["token", "--config", &cfg, "--client-credentials"],
        &[],
        None,
    )
    .await;
    assert_eq!(
        no_var.code,
        Some(2),
        "clap refuses the flag alone: {no_var}"
    );
    assert!(
        no_var.stderr.contains("--client-secret-env <VAR>"),
        "{no_var}"
    );
}

async fn check_token(cfg: &str, token: &str) -> Run {
    proxy(
        &["check", "--config", cfg, "--sign-in", "-"],
        &[],
        Some(token),
    )
    .await
}

#[tokio::test]
async fn check_sign_in_says_exactly_why_a_token_is_refused() {
    let idp = dev_idp(dev_options("alice")).await;
    let stranger = dev_idp(dev_options("alice")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &dev_idp_table(idp.issuer(), ""));
    let cfg = config.display().to_string();
    let ok = format!("{}\n", ok_line(&config, 1));

    let expired = idp.token("alice", &["writers"], -120);
    let run = check_token(&cfg, &expired).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(1), ok.as_str()),
        "{run}"
    );
    let exp = jwt_claims(&expired)["exp"].as_u64().expect("exp");
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
    let ago: u64 = run
        .stderr
        .strip_prefix(&format!("token refused: token is expired (exp {at}, "))
        .and_then(|rest| rest.strip_suffix(&format!(" s ago) (reason expired); {AUTH_FAILED}\n")))
        .unwrap_or_else(|| panic!("{run}"))
        .parse()
        .expect("seconds");
    assert!((120..=125).contains(&ago), "{run}");

    let foreign = stranger.token("alice", &["writers"], 600);
    let run = check_token(&cfg, &foreign).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(1), ok.as_str()),
        "{run}"
    );
    assert_eq!(
        run.stderr,
        format!(
            "token refused: token issuer is not accepted: Unknown Identity Provider '{}' \
             (the config trusts {}) (reason issuer); {AUTH_FAILED}\n",
            stranger.issuer(),
            idp.issuer()
        )
    );

    let nobody = idp.token("alice", &["nobody", "visitors"], 600);
    let run = check_token(&cfg, &nobody).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(1), ok.as_str()),
        "{run}"
    );
    assert_eq!(
        run.stderr,
        format!(
            "token refused: it signs in as test/alice with roles test/nobody, test/visitors, \
             but no grant names that user or one of those roles; {NO_COMMANDS}\n"
        )
    );

    // An unreachable IdP's keys: the warning, then the refusal.
    let gone = dev_idp(dev_options("alice")).await;
    let gone_token = gone.token("alice", &["writers"], 600);
    let gone_issuer = gone.issuer().to_string();
    gone.shutdown().await;
    let dir2 = tempfile::tempdir().expect("temp dir");
    let config2 = write_config(dir2.path(), &dev_idp_table(&gone_issuer, ""));
    let run = check_token(&config2.display().to_string(), &gone_token).await;
    assert_eq!(run.code, Some(1), "{run}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l
            .starts_with(&format!("warning: cannot load the keys of {gone_issuer}: "))
            && l.ends_with("; its tokens are refused until it answers")),
        "{run}"
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("token refused: no key for the token: ")
                && l.ends_with(&format!("(reason unknown_key); {AUTH_FAILED}"))),
        "{run}"
    );
}

#[tokio::test]
async fn refused_configs_and_arguments_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let config = write_config(dir.path(), &dev_idp_table(&issuer, ""));
    let cfg = config.display().to_string();

    let run = proxy(&["token", "--config", &cfg, "--idp", "okta"], &[], None).await;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(
        run.stderr,
        format!(
            "error: {cfg}: no identity provider has the issuer or auth_name_prefix 'okta'; \
             the config has identity_provider[0] (auth_name_prefix test, issuer {issuer})\n"
        )
    );

    // Nothing listens there: the IdP cannot be asked (1, not 2).
    let run = proxy(&["token", "--config", &cfg], &[], None).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: {issuer} (device flow): discovery failed: "
        )),
        "{run}"
    );

    let machine_dir = dir.path().join("machine");
    std::fs::create_dir_all(&machine_dir).expect("mkdir");
    let machine = write_config(
        &machine_dir,
        &format!(
            "[[identity_provider]]\nissuer = {}\naudience = \"a\"\nauth_name_prefix = \"test\"\nsupports_human_flows = false\n",
            toml_str(&issuer)
        ),
    );
    let run = proxy(
        &["token", "--config", &machine.display().to_string()],
        &[],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(
        run.stderr,
        format!(
            "error: {}: identity_provider[0].client_id is not set: the token command needs the OAuth \
             client to sign in as; set client_id, or pass --client-id\n",
            machine.display()
        )
    );

    // check --sign-in refuses a config exactly as check does.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "auth_name_prefix = \"test\"",
            "auth_name_prefix = \"te.st\"",
        ),
    )
    .unwrap();
    let plain = proxy(&["check", "--config", &cfg], &[], None).await;
    let signed = proxy(
        &["check", "--config", &cfg, "--sign-in", "-"],
        &[],
        Some("a.b.c"),
    )
    .await;
    assert_eq!((plain.code, signed.code), (Some(2), Some(2)), "{signed}");
    assert!(
        plain.stderr.starts_with(&format!(
            "error: {cfg}: identity_provider[0].auth_name_prefix:"
        )),
        "{plain}"
    );
    assert_eq!(signed.stderr, plain.stderr);
    assert_eq!(signed.stdout, "");

    let missing = dir.path().join("none.jwt").display().to_string();
    let run = proxy(
        &["check", "--config", &cfg, "--sign-in", &missing],
        &[],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot read the token file {missing}: ")),
        "{run}"
    );
}
