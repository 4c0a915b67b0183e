//! Relaying one client request to the backend and every reply it produces.

use tokio::io::AsyncWrite;

use crate::backend::{BackendConnection, BackendError, ForwardError};
use crate::metrics::RelayCounters;
use crate::wire::Frame;

pub enum RelayError {
    Client,
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
    loop {
        let reply = match backend.forward_reply(client).await {
            Ok(reply) => reply,
            Err(ForwardError::Backend(e)) => return Err(RelayError::Backend(e)),
            Err(ForwardError::Client(_)) => return Err(RelayError::Client),
        };
        metrics.to_client_messages.inc();
        metrics.to_client_bytes.inc_by(reply.bytes as u64);
        if !reply.more_to_come {
            return Ok(());
        }
    }
}
