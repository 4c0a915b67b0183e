//! The one relay path: a request on a leased backend connection, and every
//! reply it produces back to the client.
//!
//! The session's hooks sit around it ([`super::Session::relay`]): before
//! (ownership of the cursors and sessions the request names, fail points),
//! the lease, the exchange here, and after (cursor and transaction tracking,
//! the `Relayed` event, the memory notification). Whatever ends the
//! exchange early — a drain, an operator's close, the client gone, an error —
//! drops the lease before [`Lease::exchange_done`], which closes the backend
//! connection instead of returning it half-read.

use std::io;

use tokio::io::AsyncWrite;

use crate::backend::{BackendConnection, BackendError, ForwardError, Lease};
use crate::wire::op_msg::ReplyStatus;
use crate::wire::reply_scan::{ReplyScanner, ReplySummary};
use crate::wire::Frame;

/// Which side failed, with its cause.
#[derive(Debug)]
pub enum RelayError {
    Client(io::Error),
    Backend(BackendError),
}

impl From<ForwardError> for RelayError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Client(e) => RelayError::Client(e),
            ForwardError::Backend(e) => RelayError::Backend(e),
        }
    }
}

/// How far a relay got, readable after it was interrupted.
#[derive(Debug, Default)]
pub struct Progress {
    /// Reply bytes have started to reach the client: the reply can no
    /// longer be replaced by an error.
    pub replying: bool,
    pub to_client: u64,
    pub replies: u64,
    /// The first reply's `ok` and error code, when inspected and buffered.
    pub status: Option<ReplyStatus>,
    /// What the first reply said (ok, code, cursor id and namespace).
    pub first: ReplySummary,
    /// The first reply's `cursor.ns`.
    pub ns: Option<String>,
    /// What the last reply said: an exhaust stream ends with cursor id 0.
    pub last: ReplySummary,
}

impl Progress {
    fn record(&mut self, scanner: &ReplyScanner, bytes: usize) {
        let summary = scanner.summary();
        if self.replies == 0 {
            self.first = summary;
            self.ns = scanner.ns().map(str::to_owned);
        }
        self.last = summary;
        self.replies += 1;
        self.to_client += bytes as u64;
    }
}

/// Sends the request; unless it was fire-and-forget (moreToCome), streams
/// replies back until one no longer says moreToCome (exhaust streams send
/// several). Reply ids are not checked against the request: SecantusDB
/// chains exhaust `responseTo` differently from mongod. `inspect` reads the
/// first reply's status for the audit trail.
pub async fn stream<C: AsyncWrite + Unpin>(
    client: &mut C,
    lease: &mut Lease,
    request: &[u8],
    more_to_come: bool,
    inspect: bool,
    progress: &mut Progress,
) -> Result<(), RelayError> {
    let conn = send(lease, request).await?;
    if !more_to_come {
        forward(client, conn, inspect, progress).await?;
    }
    lease.exchange_done();
    Ok(())
}

/// Sends the request and reads its first reply whole, for a reply the
/// proxy must change. A reply that says moreToCome is not changed: see
/// [`forward_rest`].
pub async fn whole(lease: &mut Lease, request: &[u8]) -> Result<Frame, RelayError> {
    let conn = send(lease, request).await?;
    let frame = conn.recv().await.map_err(RelayError::Backend)?;
    if !crate::wire::OpMsg::parse(&frame.bytes).is_ok_and(|m| m.flags.more_to_come()) {
        lease.exchange_done();
    }
    Ok(frame)
}

/// The rest of a stream whose first reply [`whole`] read and the caller
/// passed on unchanged.
pub async fn forward_rest<C: AsyncWrite + Unpin>(
    client: &mut C,
    lease: &mut Lease,
    progress: &mut Progress,
) -> Result<(), RelayError> {
    lease.exchange_started();
    if let Some(conn) = lease.conn() {
        forward(client, conn, false, progress).await?;
    }
    lease.exchange_done();
    Ok(())
}

/// Starts the exchange on the leased connection with the request.
async fn send<'l>(
    lease: &'l mut Lease,
    request: &[u8],
) -> Result<&'l mut BackendConnection, RelayError> {
    lease.exchange_started();
    let conn = lease.conn().ok_or_else(|| {
        RelayError::Backend(BackendError::Protocol {
            addr: String::new(),
            detail: "the leased connection was already closed".into(),
        })
    })?;
    conn.send(request).await.map_err(RelayError::Backend)?;
    Ok(conn)
}

async fn forward<C: AsyncWrite + Unpin>(
    client: &mut C,
    conn: &mut BackendConnection,
    inspect: bool,
    progress: &mut Progress,
) -> Result<(), RelayError> {
    loop {
        let first = progress.replies == 0;
        let mut scanner = ReplyScanner::new();
        let reply = conn
            .forward_reply_inspecting(
                client,
                &mut progress.replying,
                inspect && first,
                Some(&mut scanner),
            )
            .await?;
        if first {
            progress.status = reply.status;
        }
        progress.record(&scanner, reply.bytes);
        if !reply.more_to_come {
            return Ok(());
        }
    }
}
