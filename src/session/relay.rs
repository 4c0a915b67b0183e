//! Relaying one client request to the backend and every reply it produces.

use tokio::io::AsyncWrite;

use crate::backend::{BackendConnection, BackendError, ForwardError};
use crate::wire::op_msg::ReplyStatus;

pub enum RelayError {
    Client,
    Backend(BackendError),
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
}

/// Sends the client's bytes unchanged; unless the request was fire-and-forget
/// (moreToCome), streams replies back until one no longer says moreToCome
/// (exhaust cursors send several). Reply ids are not checked against the
/// request: SecantusDB chains exhaust `responseTo` differently from mongod.
/// `inspect` reads the first reply's status for the audit trail.
pub async fn relay<C: AsyncWrite + Unpin>(
    client: &mut C,
    backend: &mut BackendConnection,
    request: &[u8],
    more_to_come: bool,
    inspect: bool,
    progress: &mut Progress,
) -> Result<(), RelayError> {
    backend.send(request).await.map_err(RelayError::Backend)?;
    if more_to_come {
        return Ok(());
    }
    loop {
        let first = progress.replies == 0;
        let reply = match backend
            .forward_reply_inspecting(client, &mut progress.replying, inspect && first)
            .await
        {
            Ok(reply) => reply,
            Err(ForwardError::Backend(e)) => return Err(RelayError::Backend(e)),
            Err(ForwardError::Client(_)) => return Err(RelayError::Client),
        };
        if first {
            progress.status = reply.status;
        }
        progress.replies += 1;
        progress.to_client += reply.bytes as u64;
        if !reply.more_to_come {
            return Ok(());
        }
    }
}
