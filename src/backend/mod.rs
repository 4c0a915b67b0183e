//! Connections to the backend mongod. (Temporary stub on main; the real module is on the backend branch.)
use crate::wire::Frame;
use bson::RawDocumentBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("backend stub")]
pub struct BackendError;

pub struct ServerInfo {
    pub max_wire_version: i32,
    pub min_wire_version: i32,
    pub max_bson_object_size: i32,
    pub max_message_size_bytes: i32,
    pub max_write_batch_size: i32,
    pub logical_session_timeout_minutes: Option<i32>,
    pub build_info: RawDocumentBuf,
    pub is_replica_set: bool,
}

pub struct Backend;
pub struct BackendConnection;

impl Backend {
    pub fn new(_c: &crate::config::BackendConfig) -> Result<Backend, BackendError> {
        Ok(Backend)
    }
    pub async fn server_info(&self) -> Result<Arc<ServerInfo>, BackendError> {
        Err(BackendError)
    }
    pub async fn connect_as(&self, _u: &str, _p: &str) -> Result<BackendConnection, BackendError> {
        Err(BackendError)
    }
}
impl BackendConnection {
    pub async fn send(&mut self, _b: &[u8]) -> Result<(), BackendError> {
        Err(BackendError)
    }
    pub async fn recv(&mut self) -> Result<Frame, BackendError> {
        Err(BackendError)
    }
}
