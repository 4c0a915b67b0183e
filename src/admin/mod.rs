//! The operator's control over HTTP: `/admin/...` on the `[metrics]`
//! address, behind a bearer token (`[admin] token_env` / `token_file`).
//!
//! [`token`] is a leaf the runtime builder uses to read and hold the token;
//! [`http`] sits above the runtime and the session registry and below the
//! server, which hands it the reload function (the one SIGHUP runs).

pub mod http;
mod token;

pub use token::AdminToken;
