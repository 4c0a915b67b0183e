//! Several proxies as several mongos, with the real binary and real drivers:
//! three proxies, two of them drained (SIGTERM) one after the other while
//! clients write and read in a loop — every operation completes without an
//! error reaching the application, and every acknowledged write is found.
//!
//! - all three hosts in the URI: the Node driver alone, then pymongo and
//!   Node at the same time against the same proxies;
//! - behind one HAProxy in TCP mode (TLS still ends at the proxies): with
//!   `loadBalanced=true` (the proxy's `serviceId`), and with a plain URI
//!   naming only the load balancer.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mongo_oidc_proxy_devkit::devidp::DevIdp;
use serde_json::{json, Value};
use support::proxy_env::{self, dev_idp_options, shared_files};
use support::proxy_process::ProxyProcess;
use support::{clients_dir, free_port, run_node, run_python, RunOutput};

const WAIT: Duration = Duration::from_secs(15);
/// The proxy's log line for a sign-in.
const SIGNED_IN: &str = "\"signed in\"";
/// How long each client loops; proxies are stopped at 2 s and 5 s.
const LOOP_SECS: &str = "10";

/// One proxy's config file on a fixed port, with a short drain.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new(issuer: &str) -> Setup {
        let s = Setup {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
        };
        let text = proxy_env::config_text(issuer, "", "[shutdown]\ndrain_secs = 2\n").replace(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"127.0.0.1:{}\"", s.port),
        );
        std::fs::write(s.path(), text).expect("write config");
        s
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }
}

struct Proxies {
    idp: DevIdp,
    setups: Vec<Setup>,
    procs: Vec<ProxyProcess>,
}

impl Proxies {
    async fn start(n: usize) -> Proxies {
        let idp = DevIdp::start("127.0.0.1:0".parse().expect("addr"), dev_idp_options())
            .await
            .expect("development IdP");
        let setups: Vec<Setup> = (0..n).map(|_| Setup::new(idp.issuer())).collect();
        let mut procs = Vec::new();
        for s in &setups {
            procs.push(ProxyProcess::start(&s.path(), s.port).await);
        }
        Proxies { idp, setups, procs }
    }

    /// Every proxy as a host, `localhost` as the drivers' OIDC defaults allow.
    fn hosts(&self) -> String {
        self.setups
            .iter()
            .map(|s| format!("localhost:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn token(&self) -> String {
        self.idp.token("alice", &["writers"], 600)
    }

    /// At 2 s and again at 5 s, SIGTERM the running proxy holding the most
    /// sessions, so that the clients' connections must move; returns which.
    async fn drain_two(&self) -> Vec<(usize, usize)> {
        let mut drained = Vec::new();
        for wait in [2, 3] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let (i, sessions) = (0..self.procs.len())
                .filter(|i| !drained.iter().any(|(d, _)| d == i))
                .map(|i| (i, self.procs[i].count(SIGNED_IN)))
                .max_by_key(|(_, n)| *n)
                .expect("a proxy left");
            self.procs[i].signal("TERM");
            drained.push((i, sessions));
        }
        drained
    }

    /// The drained proxies held sessions and exit 0; the third still runs.
    async fn expect_drained(&mut self, drained: &[(usize, usize)]) {
        println!("drained (proxy, sign-ins so far): {drained:?}");
        for &(i, sessions) in drained {
            assert!(
                sessions > 0,
                "proxy {i} held no session when it was drained: the test proves nothing"
            );
            let p = &mut self.procs[i];
            let status = p.wait_exit(WAIT).await.expect("a drained proxy exits");
            assert!(status.success(), "{status:?}\n{}", p.log());
        }
        let left = (0..self.procs.len())
            .find(|i| !drained.iter().any(|(d, _)| d == i))
            .expect("one proxy left");
        assert!(self.procs[left].alive(), "the third proxy keeps serving");
    }
}

fn ca() -> String {
    shared_files().join("ca.pem").display().to_string()
}

async fn node(uri: &str, token: &str) -> RunOutput {
    let ca = ca();
    let args = [uri, "--ca", &ca, "--token", token, "--seconds", LOOP_SECS];
    run_node(&clients_dir().join("failover.js"), &args, &[]).await
}

async fn pymongo(uri: &str, token: &str) -> RunOutput {
    let ca = ca();
    let args = [uri, "--ca", &ca, "--token", token, "--seconds", LOOP_SECS];
    run_python(&clients_dir().join("failover.py"), &args, &[]).await
}

/// No error reached the loop and every acknowledged write is there.
fn assert_no_loss(who: &str, out: &RunOutput) -> Value {
    let v = out.expect_ok();
    println!("{who}: {v}");
    assert_eq!(
        v["errors"],
        json!([]),
        "{who}: no error may reach the application: {out}"
    );
    assert_eq!(
        v["missing"],
        json!([]),
        "{who}: every acknowledged write is found: {out}"
    );
    assert_eq!(v["found"], v["acknowledged"], "{who}: {out}");
    assert!(
        v["acknowledged"].as_u64().unwrap_or(0) > 50,
        "{who}: the loop ran: {out}"
    );
    v
}

#[tokio::test]
async fn node_keeps_writing_through_the_other_proxies_while_two_drain() {
    let mut p = Proxies::start(3).await;
    let uri = format!("mongodb://{}/", p.hosts());
    let token = p.token();
    let (out, drained) = tokio::join!(node(&uri, &token), p.drain_two());
    assert_no_loss("node", &out);
    p.expect_drained(&drained).await;
}

#[tokio::test]
async fn pymongo_and_node_together_keep_writing_while_two_proxies_drain() {
    let mut p = Proxies::start(3).await;
    let uri = format!("mongodb://{}/", p.hosts());
    let token = p.token();
    let (js, py, drained) = tokio::join!(node(&uri, &token), pymongo(&uri, &token), p.drain_two());
    assert_no_loss("node", &js);
    assert_no_loss("pymongo", &py);
    p.expect_drained(&drained).await;
}

/// Debian's HAProxy in TCP mode in front of the proxies, in the foreground
/// on a free port; killed on drop.
struct HaProxy {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn haproxy_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("haproxy"))
        .chain([PathBuf::from("/usr/sbin/haproxy")]);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("haproxy not found on PATH or in /usr/sbin; run scripts/setup-tools.sh as root (apt-get install haproxy)");
}

impl HaProxy {
    async fn start(backends: &[u16]) -> HaProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // Health checks every 200 ms take a draining proxy (its listener is
        // closed) out of rotation at once; a refused connect is retried on
        // another server (redispatch), as a cloud TCP load balancer does.
        let mut cfg = format!(
            "global\n    maxconn 512\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n\
             \x20   retries 3\n    option redispatch 1\n\n\
             frontend mongodb\n    bind 127.0.0.1:{port}\n    default_backend proxies\n\n\
             backend proxies\n    balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "    server p{i} 127.0.0.1:{b} check inter 200ms fall 1 rise 2\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let mut child = tokio::process::Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "haproxy exited with {status}; check its config: {}",
                    path.display()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        HaProxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn load_balanced_clients_behind_haproxy_keep_writing_while_two_proxies_drain() {
    let mut p = Proxies::start(3).await;
    let ports: Vec<u16> = p.setups.iter().map(|s| s.port).collect();
    let lb = HaProxy::start(&ports).await;
    let uri = format!("mongodb://localhost:{}/?loadBalanced=true", lb.port);
    let token = p.token();
    let (js, py, drained) = tokio::join!(node(&uri, &token), pymongo(&uri, &token), p.drain_two());
    assert_no_loss("node, loadBalanced=true", &js);
    assert_no_loss("pymongo, loadBalanced=true", &py);
    p.expect_drained(&drained).await;
}

#[tokio::test]
async fn clients_with_only_the_load_balancer_in_a_plain_uri_keep_writing_while_two_proxies_drain() {
    let mut p = Proxies::start(3).await;
    let ports: Vec<u16> = p.setups.iter().map(|s| s.port).collect();
    let lb = HaProxy::start(&ports).await;
    let uri = format!("mongodb://localhost:{}/", lb.port);
    let token = p.token();
    let (js, py, drained) = tokio::join!(node(&uri, &token), pymongo(&uri, &token), p.drain_two());
    assert_no_loss("node, one address", &js);
    assert_no_loss("pymongo, one address", &py);
    p.expect_drained(&drained).await;
}
