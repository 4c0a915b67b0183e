//! mongo-oidc-proxy: a TLS-terminating MongoDB wire-protocol proxy that signs
//! clients in with the SASL mechanism MONGODB-OIDC and relays each authorised
//! session to a backend `mongod` as a configured backend identity.
//!
//! Layers, with one direction of dependency:
//! - [`wire`]: framing and codecs as pure functions over byte slices.
//! - [`auth`]: JWT/JWKS verification and the MONGODB-OIDC conversation; no sockets.
//! - [`authz`]: user/role names and grants.
//! - [`backend`]: connections to mongod and the proxy's own SCRAM sign-in.
//! - [`session`]: one client connection's life, composing the above.
//! - [`server`]: listener, TLS, connection limits, shutdown.
//! - [`metrics`], [`config`]: observability and configuration.
//! - [`devidp`], [`demo`]: a development identity provider and the demo launcher.

pub mod auth;
pub mod authz;
pub mod backend;
pub mod config;
pub mod demo;
pub mod devcerts;
pub mod devidp;
pub mod metrics;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;
