//! demo (stub)
