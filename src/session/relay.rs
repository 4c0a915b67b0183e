//! Relaying one client request to the backend and every reply it produces.

use tokio::io::AsyncWrite;

use crate::backend::{BackendConnection, BackendError, ForwardError};

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
}

/// Sends the client's bytes unchanged; unless the request was fire-and-forget
/// (moreToCome), streams replies back until one no longer says moreToCome
/// (exhaust cursors send several). Reply ids are not checked against the
/// request: SecantusDB chains exhaust `responseTo` differently from mongod.
pub async fn relay<C: AsyncWrite + Unpin>(
    client: &mut C,
    backend: &mut BackendConnection,
    request: &[u8],
    more_to_come: bool,
    progress: &mut Progress,
) -> Result<(), RelayError> {
    backend.send(request).await.map_err(RelayError::Backend)?;
    if more_to_come {
        return Ok(());
    }
    loop {
        let reply = match backend.forward_reply(client, &mut progress.replying).await {
            Ok(reply) => reply,
            Err(ForwardError::Backend(e)) => return Err(RelayError::Backend(e)),
            Err(ForwardError::Client(_)) => return Err(RelayError::Client),
        };
        progress.replies += 1;
        progress.to_client += reply.bytes as u64;
        if !reply.more_to_come {
            return Ok(());
        }
    }
}
