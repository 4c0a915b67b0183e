//! demo (stub)

pub mod secantus;
