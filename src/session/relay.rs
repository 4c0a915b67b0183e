//! Relaying one client request to the backend and every reply it produces.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::backend::{BackendConnection, BackendError};
use crate::metrics::RelayCounters;
use crate::wire::{Frame, OpCode, OpMsgFlags};

pub enum RelayError {
    Client,
    Backend(BackendError),
}

/// Sends the client's bytes unchanged; unless the request was fire-and-forget
/// (moreToCome), copies replies back until one no longer says moreToCome
/// (exhaust cursors stream several). Reply ids are not checked against the
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
        let reply = backend.recv().await.map_err(RelayError::Backend)?;
        client
            .write_all(&reply.bytes)
            .await
            .map_err(|_| RelayError::Client)?;
        client.flush().await.map_err(|_| RelayError::Client)?;
        metrics.to_client_messages.inc();
        metrics.to_client_bytes.inc_by(reply.bytes.len() as u64);
        if !streams_more(&reply) {
            return Ok(());
        }
    }
}

fn streams_more(reply: &Frame) -> bool {
    reply.header.op_code == OpCode::Msg
        && reply.body().get(..4).is_some_and(|f| {
            u32::from_le_bytes([f[0], f[1], f[2], f[3]]) & OpMsgFlags::MORE_TO_COME != 0
        })
}
