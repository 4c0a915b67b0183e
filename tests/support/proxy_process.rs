//! The proxy as an operator runs it: the real binary with a config file,
//! its log collected, signals sent with `kill`.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{drain, take, Buf};

pub struct ProxyProcess {
    child: Child,
    log: Buf,
    out: Buf,
    pub port: u16,
}

impl ProxyProcess {
    /// Starts `mongo-oidc-proxy --config FILE` and waits until it listens
    /// on `port` (which the config must name).
    pub async fn start(config: &Path, port: u16) -> ProxyProcess {
        ProxyProcess::start_under(&[], config, port).await
    }

    /// Like [`ProxyProcess::start`], run through `wrapper` (e.g.
    /// `["prlimit", "--nofile=256:256", "--"]`).
    pub async fn start_under(wrapper: &[&str], config: &Path, port: u16) -> ProxyProcess {
        ProxyProcess::launch(wrapper, config, port, &["--log-format", "json"], &[]).await
    }

    /// Like [`ProxyProcess::start`] with other arguments after `--config
    /// FILE` and extra environment variables (e.g. `HTTPS_PROXY`).
    pub async fn start_with(
        config: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        ProxyProcess::launch(&[], config, port, args, env).await
    }

    async fn launch(
        wrapper: &[&str],
        config: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let binary = env!("CARGO_BIN_EXE_mongo-oidc-proxy");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("MONGO_OIDC_PROXY_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mongo-oidc-proxy");
        let log = drain(child.stderr.take().expect("piped stderr"));
        let out = drain(child.stdout.take().expect("piped stdout"));
        let mut p = ProxyProcess {
            child,
            log,
            out,
            port,
        };
        if !p
            .wait_for_log("mongo-oidc-proxy listening", Duration::from_secs(20))
            .await
        {
            let status = p.child.try_wait().ok().flatten();
            panic!("the proxy did not start ({status:?}):\n{}", p.log());
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the proxy is running")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `USR1`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn log(&self) -> String {
        take(&self.log)
    }

    /// What the proxy wrote to standard output (the audit trail with `path = "-"`).
    pub fn stdout(&self) -> String {
        take(&self.out)
    }

    /// How often `needle` occurs in the log so far.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log holds `needle` at least once more than `already` times.
    pub async fn wait_for_more(&self, needle: &str, already: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.count(needle) > already {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_more(needle, 0, timeout).await
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
