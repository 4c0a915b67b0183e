//! The audit trail: one more event sink, writing one JSON object per line
//! ([`record`]) to a file or standard output (`[audit]`).
//!
//! Off the hot path: the sink only formats a small record and `try_send`s
//! it into a bounded queue; a writer thread appends the lines through a
//! buffer and flushes whenever the queue runs empty. A full queue drops the
//! record and counts it (`mongo_oidc_proxy_audit_records_total{result="dropped"}`),
//! so a slow disk never slows a session. Everything that changes the output
//! (a reload to another path, SIGUSR1's reopen, the final flush) travels
//! through the same queue, so each record lands in the output that was
//! current when it was emitted.

pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditConfig, ConfigError};
use crate::session::events::{ConnInfo, Event, OperatorEvent, Sink};

/// Records waiting for the writer; past this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 10_000;
/// How long the final flush may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
const FIELD: &str = "audit.path";

/// What `check`, start-up and reload refuse: a file that cannot be appended
/// to, because its folder is missing or not writable, or it is a folder.
/// Creates nothing that was not there (a probe file is removed again).
pub fn check(config: Option<&AuditConfig>) -> Result<(), ConfigError> {
    let Some(config) = config.filter(|c| !c.is_stdout()) else {
        return Ok(());
    };
    let path = &config.path;
    if path.is_dir() {
        return Err(ConfigError::new(
            FIELD,
            format!("{} is a folder; name a file inside it", path.display()),
        ));
    }
    if path.exists() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| cannot_open(path, &e));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "the folder {} does not exist; create it or name a file in an existing folder",
                folder.display()
            ),
        ));
    }
    // Only creating a file shows that the folder is writable for this
    // process (permissions, ACLs, read-only mounts alike).
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(probe) => {
            drop(probe);
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Err(e) => Err(ConfigError::new(
            FIELD,
            format!(
                "cannot create {} (is the folder writable for the proxy's user?): {e}",
                path.display()
            ),
        )),
    }
}

fn cannot_open(path: &Path, e: &io::Error) -> ConfigError {
    ConfigError::new(
        FIELD,
        format!("cannot open {} for appending: {e}", path.display()),
    )
}

/// Where records go.
struct Output {
    /// `None` for standard output.
    path: Option<PathBuf>,
    writer: BufWriter<Box<dyn Write + Send>>,
}

impl Output {
    fn open(config: &AuditConfig) -> Result<Output, ConfigError> {
        if config.is_stdout() {
            return Ok(Output {
                path: None,
                writer: BufWriter::new(Box::new(io::stdout())),
            });
        }
        let file = open_append(&config.path).map_err(|e| cannot_open(&config.path, &e))?;
        Ok(Output {
            path: Some(config.path.clone()),
            writer: BufWriter::new(Box::new(file)),
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        // Readable by the proxy's group (a log shipper), by no one else.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

enum Msg {
    Line(String),
    /// Write to this output from now on (`None`: auditing was turned off).
    Switch(Option<Output>),
    /// Open the file again at its path (logrotate moved it away).
    Reopen,
    /// Flush, then say so.
    Flush(oneshot::Sender<()>),
}

/// The audit sink. Always installed, so a reload can turn auditing on.
pub struct Audit {
    enabled: AtomicBool,
    commands: AtomicBool,
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
    warned_full: AtomicBool,
    /// The settings in force, which a reload compares against.
    current: Mutex<Option<AuditConfig>>,
}

/// The writer side, not yet running: [`Writer::spawn`] starts its thread.
pub struct Writer {
    rx: mpsc::Receiver<Msg>,
    output: Option<Output>,
    written: IntCounter,
    dropped: IntCounter,
    failing: bool,
}

impl Audit {
    /// Opens the output and starts the writer.
    pub fn start(
        config: Option<&AuditConfig>,
        registry: &Registry,
    ) -> Result<Arc<Audit>, ConfigError> {
        let (audit, writer) = Audit::new(config, QUEUE_CAPACITY, registry)?;
        writer.spawn();
        Ok(audit)
    }

    /// The sink and its writer with a queue of `capacity` records; the
    /// records counter is registered in `registry`.
    pub fn new(
        config: Option<&AuditConfig>,
        capacity: usize,
        registry: &Registry,
    ) -> Result<(Arc<Audit>, Writer), ConfigError> {
        let output = config.map(Output::open).transpose()?;
        let records = IntCounterVec::new(
            Opts::new(
                "audit_records_total",
                "Audit records, by whether they were written or dropped (queue full, or the output failed).",
            )
            .namespace("mongo_oidc_proxy"),
            &["result"],
        )
        .map_err(|e| ConfigError::new(FIELD, format!("cannot define the audit metric: {e}")))?;
        if let Err(e) = registry.register(Box::new(records.clone())) {
            tracing::warn!(error = %e, "the audit records metric is not exported");
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let series = |result: &str| {
            records
                .get_metric_with_label_values(&[result])
                .map_err(|e| {
                    ConfigError::new(FIELD, format!("cannot define the audit metric: {e}"))
                })
        };
        let (dropped, written) = (series("dropped")?, series("written")?);
        let audit = Arc::new(Audit {
            enabled: AtomicBool::new(config.is_some()),
            commands: AtomicBool::new(config.is_some_and(|c| c.commands)),
            tx,
            dropped: dropped.clone(),
            warned_full: AtomicBool::new(false),
            current: Mutex::new(config.cloned()),
        });
        let writer = Writer {
            rx,
            output,
            written,
            dropped,
            failing: false,
        };
        Ok((audit, writer))
    }

    /// Applies a reloaded `[audit]`: another path (or turning auditing on or
    /// off) switches the output after what is already queued; the same path
    /// keeps the open file. Refused, changing nothing, when the new file
    /// cannot be opened.
    pub async fn reconfigure(&self, new: Option<&AuditConfig>) -> Result<(), ConfigError> {
        let current = self.lock().clone();
        let same_output = match (&current, new) {
            (Some(a), Some(b)) => a.path == b.path,
            (None, None) => true,
            _ => false,
        };
        if !same_output {
            let output = new.map(Output::open).transpose()?;
            if new.is_none() {
                self.enabled.store(false, Ordering::Relaxed);
            }
            let _ = self.tx.send(Msg::Switch(output)).await;
        }
        self.commands
            .store(new.is_some_and(|c| c.commands), Ordering::Relaxed);
        self.enabled.store(new.is_some(), Ordering::Relaxed);
        *self.lock() = new.cloned();
        Ok(())
    }

    /// SIGUSR1: reopen the file at its path, after what is already queued.
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
    }

    /// Waits (bounded) until everything queued so far is written and flushed.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            if self.tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        })
        .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<AuditConfig>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.inc();
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = QUEUE_CAPACITY,
                    "audit queue full: records are being dropped and counted in \
                     mongo_oidc_proxy_audit_records_total{{result=\"dropped\"}}; is the audit output slow?"
                );
            }
        }
    }
}

impl Sink for Audit {
    fn emit(&self, conn: &ConnInfo, event: &Event<'_>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let commands = self.commands.load(Ordering::Relaxed);
        if !record::is_audited(event, commands) {
            return;
        }
        if let Some(line) = record::session(SystemTime::now(), conn, event, commands) {
            self.push(line);
        }
    }

    fn operator(&self, event: &OperatorEvent<'_>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if let Some(line) = record::operator(SystemTime::now(), event) {
            self.push(line);
        }
    }
}

impl Writer {
    /// Runs the writer on a thread of its own: file writes block, and must
    /// not hold up the async workers. It ends when the sink is dropped.
    pub fn spawn(self) {
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || self.run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer; audit records will be dropped");
        }
    }

    fn run(mut self) {
        while let Some(msg) = self.rx.blocking_recv() {
            self.handle(msg);
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            self.flush();
        }
        self.flush();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => self.write(&line),
            Msg::Switch(output) => {
                self.flush();
                if let Some(path) = output.as_ref().and_then(|o| o.path.as_ref()) {
                    tracing::info!(path = %path.display(), "audit records now go to this file");
                }
                self.output = output;
            }
            Msg::Reopen => self.reopen(),
            Msg::Flush(ack) => {
                self.flush();
                let _ = ack.send(());
            }
        }
    }

    fn write(&mut self, line: &str) {
        let Some(out) = self.output.as_mut() else {
            // Emitted just before a reload turned auditing off.
            self.dropped.inc();
            return;
        };
        let result = out
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| out.writer.write_all(b"\n"));
        match result {
            Ok(()) => {
                self.written.inc();
                if self.failing {
                    self.failing = false;
                    tracing::info!("audit records are being written again");
                }
            }
            Err(e) => {
                self.dropped.inc();
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e, "cannot write the audit trail; records are dropped and counted until writing works again");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.output.as_mut() {
            if let Err(e) = out.writer.flush() {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e, "cannot write the audit trail; records are dropped and counted until writing works again");
                }
            }
        }
    }

    fn reopen(&mut self) {
        self.flush();
        let Some(out) = self.output.as_mut() else {
            tracing::info!("no [audit] file configured; nothing to reopen");
            return;
        };
        let Some(path) = out.path.clone() else {
            tracing::info!("audit records go to standard output; nothing to reopen");
            return;
        };
        match open_append(&path) {
            Ok(file) => {
                out.writer = BufWriter::new(Box::new(file));
                tracing::info!(path = %path.display(), "audit file reopened");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "cannot reopen the audit file; still writing to the file open before"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path, commands: bool) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            commands,
        }
    }

    fn counts(registry: &Registry) -> (u64, u64) {
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        let value = |result: &str| {
            let key = format!("mongo_oidc_proxy_audit_records_total{{result=\"{result}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .map_or(0, |v| v.parse().unwrap())
        };
        (value("written"), value("dropped"))
    }

    fn reload(n: usize) -> OperatorEvent<'static> {
        let detail: &'static str = Box::leak(format!("reload {n}").into_boxed_str());
        OperatorEvent::Reload {
            ok: true,
            path: "p",
            detail,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let registry = Registry::new();
        let (audit, writer) = Audit::new(Some(&config(&path, false)), 3, &registry).unwrap();
        // The writer is not running yet: three fit, two are dropped.
        for n in 0..5 {
            audit.operator(&reload(n));
        }
        assert_eq!(counts(&registry), (0, 2));
        writer.spawn();
        audit.flush().await;
        assert_eq!(counts(&registry), (3, 2));
        let got: Vec<_> = lines(&path).iter().map(|v| v["changes"].clone()).collect();
        assert_eq!(got, ["reload 0", "reload 1", "reload 2"]);
        // Room again: nothing more is dropped.
        audit.operator(&reload(5));
        audit.flush().await;
        assert_eq!(counts(&registry), (4, 2));
    }

    #[tokio::test]
    async fn reconfigure_switches_files_in_order_and_turns_auditing_off() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let registry = Registry::new();
        let audit = Audit::start(Some(&config(&first, false)), &registry).unwrap();
        audit.operator(&reload(1));
        audit
            .reconfigure(Some(&config(&second, true)))
            .await
            .unwrap();
        assert!(audit.commands.load(Ordering::Relaxed));
        audit.operator(&reload(2));
        // The same path keeps the open file.
        audit
            .reconfigure(Some(&config(&second, false)))
            .await
            .unwrap();
        audit.operator(&reload(3));
        audit.reconfigure(None).await.unwrap();
        audit.operator(&reload(4));
        audit.flush().await;
        let changes =
            |p: &Path| -> Vec<_> { lines(p).iter().map(|v| v["changes"].clone()).collect() };
        assert_eq!(changes(&first), ["reload 1"]);
        assert_eq!(changes(&second), ["reload 2", "reload 3"]);
        assert_eq!(counts(&registry), (3, 0));
        // A file that cannot be opened refuses the change and keeps the old.
        let bad = config(&dir.path().join("missing/c.log"), false);
        let err = audit.reconfigure(Some(&bad)).await.unwrap_err();
        assert_eq!(err.field, "audit.path");
        assert!(!audit.enabled.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn reopen_starts_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let audit = Audit::start(Some(&config(&path, false)), &Registry::new()).unwrap();
        audit.operator(&reload(1));
        audit.flush().await;
        std::fs::rename(&path, &rotated).unwrap();
        audit.operator(&reload(2));
        audit.reopen().await;
        audit.operator(&reload(3));
        audit.flush().await;
        let changes =
            |p: &Path| -> Vec<_> { lines(p).iter().map(|v| v["changes"].clone()).collect() };
        assert_eq!(changes(&rotated), ["reload 1", "reload 2"]);
        assert_eq!(changes(&path), ["reload 3"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777 & !0o640, 0, "mode {mode:o}");
        }
    }

    #[test]
    fn check_refuses_what_cannot_be_appended_to_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let ok = config(&dir.path().join("audit.log"), false);
        check(Some(&ok)).unwrap();
        assert!(!ok.path.exists(), "check leaves nothing behind");
        std::fs::write(&ok.path, "kept\n").unwrap();
        check(Some(&ok)).unwrap();
        assert_eq!(std::fs::read_to_string(&ok.path).unwrap(), "kept\n");
        check(None).unwrap();
        check(Some(&config(Path::new("-"), false))).unwrap();

        let missing = dir.path().join("nowhere/audit.log");
        assert_eq!(
            check(Some(&config(&missing, false)))
                .unwrap_err()
                .to_string(),
            format!(
                "audit.path: the folder {} does not exist; create it or name a file in an \
                 existing folder",
                dir.path().join("nowhere").display()
            )
        );
        assert_eq!(
            check(Some(&config(dir.path(), false)))
                .unwrap_err()
                .to_string(),
            format!(
                "audit.path: {} is a folder; name a file inside it",
                dir.path().display()
            )
        );
        // A folder nobody may create files in (even root, on /proc).
        let err = check(Some(&config(Path::new("/proc/audit.log"), false))).unwrap_err();
        assert_eq!(err.field, "audit.path");
        assert!(
            err.message.starts_with(
                "cannot create /proc/audit.log (is the folder writable for the proxy's user?): "
            ),
            "{err}"
        );
    }
}
