//! Connections to the backend mongod. (Stub: being written.)
