//! session (stub)
