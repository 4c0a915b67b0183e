//! mongo-oidc-proxy: a TLS-terminating MongoDB wire-protocol proxy that signs
//! clients in with the SASL mechanism MONGODB-OIDC and relays each authorised
//! session to a backend `mongod` as a configured backend identity.
//!
//! Layers, with one direction of dependency (lower never imports higher):
//! - [`wire`]: framing (header, size limit before allocation), OP_MSG with
//!   CRC-32C, OP_QUERY/OP_REPLY for the legacy handshake — pure functions over
//!   byte slices, fuzzed in `fuzz/`.
//! - [`auth`]: [`auth::jwt`] (zero-copy token parsing, alg allow-list, claim
//!   rules), [`auth::jwks`] (discovery, per-issuer key cache, just-in-time
//!   refresh under a quiesce period), [`auth::idp`] (IdP selection and the
//!   verified-token cache) and [`auth::oidc`] (the SASL conversation). No sockets.
//! - [`authz`]: user and role names, grants that pick the backend identity.
//! - [`backend`]: URI parsing, connections, SCRAM-SHA-256, primary discovery,
//!   and forwarding replies as they arrive.
//! - [`session`]: one client connection's life — handshake, sign-in,
//!   expiry (391) and re-authentication, relay.
//! - [`server`]: listener, TLS ([`tls`]), connection limit, shutdown; builds
//!   the live parts from a [`config::Config`].
//! - [`metrics`]: Prometheus registry and `/metrics`, `/healthz`, `/readyz`.
//! - [`errors`]: MongoDB error codes and replies.
//! - [`fdlimit`]: the file-descriptor limit against `limits.max_connections`.
//! - [`devcerts`], [`devidp`], [`demo`]: development certificates, a
//!   development identity provider and the `demo` subcommand (SecantusDB
//!   launcher in [`demo::secantus`]), used by the demo and the tests.

pub mod auth;
pub mod authz;
pub mod backend;
pub mod config;
pub mod demo;
pub mod devcerts;
pub mod devidp;
pub mod errors;
pub mod fdlimit;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;
