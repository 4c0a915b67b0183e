//! Relaying one client request to the backend and every reply it produces.

use tokio::io::AsyncWrite;

use crate::backend::{BackendConnection, BackendError, ForwardError};
use crate::metrics::RelayCounters;
use crate::wire::Frame;

pub enum RelayError {
    /// The client went away, or the backend failed mid-reply: close the client.
    Client,
    /// The backend failed before any reply byte reached the client.
    Backend(BackendError),
}

/// Sends the client's bytes unchanged; unless the request was fire-and-forget
/// (moreToCome), streams replies back until one no longer says moreToCome
/// (exhaust cursors send several). Reply ids are not checked against the
/// request: SecantusDB chains exhaust `responseTo` differently from mongod.
pub async fn relay<C: AsyncWrite + Unpin>(
    client: &mut C,
    backend: &mut BackendConnection,
    request: &Frame,
    more_to_come: bool,
    metrics: &RelayCounters,
) -> Result<(), RelayError> {
    backend
        .send(&request.bytes)
        .await
        .map_err(RelayError::Backend)?;
    metrics.to_backend_messages.inc();
    metrics.to_backend_bytes.inc_by(request.bytes.len() as u64);
    if more_to_come {
        return Ok(());
    }
    let mut first = true;
    loop {
        let reply = match backend.forward_reply(client).await {
            Ok(reply) => reply,
            // Before the first byte of the first reply the session can still answer.
            Err(ForwardError::Backend(e)) if first => return Err(RelayError::Backend(e)),
            Err(ForwardError::Backend(e) | ForwardError::BackendMidReply(e)) => {
                tracing::warn!(error = %e, "backend failed in the middle of a reply; closing the client connection");
                return Err(RelayError::Client);
            }
            Err(ForwardError::Client(_)) => return Err(RelayError::Client),
        };
        first = false;
        metrics.to_client_messages.inc();
        metrics.to_client_bytes.inc_by(reply.bytes as u64);
        if !reply.more_to_come {
            return Ok(());
        }
    }
}
