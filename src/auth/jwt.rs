//! JWT parsing and verification. (Stub: being written.)
