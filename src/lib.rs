//! mongo-oidc-proxy: a TLS-terminating MongoDB wire-protocol proxy that signs
//! clients in with the SASL mechanism MONGODB-OIDC and relays each authorised
//! session to a backend `mongod` as a configured backend identity.
//!
//! # The session pipeline
//!
//! Every client message goes through three steps ([`session`]):
//!
//! 1. **decode** — [`wire::Request::decode`], pure: one walk of the frame into
//!    a typed request (opcode, OP_MSG flags, command name, `$db`, `lsid`,
//!    `txnNumber`, transaction flags, cursor ids, the original bytes). A
//!    repeated name, `$db`, `lsid` or transaction field is refused.
//! 2. **decide** — [`session::decide::decide`], pure: `(request, phase,
//!    inputs) → action` (answer locally, refuse with an error, SASL step,
//!    relay, close). Every rule of the session lives there and is
//!    unit-tested without sockets.
//!    With test commands on (`[testing]`), mongod's `failCommand` fail
//!    point ([`session::failpoint`]) is consulted first and may close the
//!    connection, delay the command or answer an error instead.
//! 3. **act** — the session carries the action out (a relay leases a pooled
//!    backend connection for the one request and its replies) and emits
//!    [`session::events::Event`]s; the sinks ([`metrics::MetricsSink`],
//!    [`session::events::LogSink`], [`audit::Audit`]) turn them into
//!    counters, log lines and audit records.
//!
//! A connection's phase ([`session::phase::Phase`]) is `Anonymous`,
//! `Authenticating` (human flow between step 1 and step 2) or `SignedIn`.
//! Once per message the phase is resolved against the current runtime: a
//! token past its `exp`, a temporary grant past its `expires`, a withdrawn
//! signing key, or an IdP or grant removed by a reload marks the sign-in
//! expired, and commands get ReauthenticationRequired (391) until the same
//! user signs in again. Draining is a process-wide input, not a phase.
//!
//! # The runtime and reload
//!
//! [`runtime::Runtime::build`] turns a [`config::Config`] into the live parts
//! (TLS acceptor, IdP registry, grants, backend, limits). `check`, start-up
//! and reload all call it, so `check` refuses exactly what start-up refuses.
//! A reload (SIGHUP, [`server::Running::reload`]) builds a new runtime and
//! swaps it in whole; identity providers are identified by their whole
//! config, and issuers whose key source is unchanged keep their JWKS cache.
//! SIGTERM/SIGINT drain like mongos's quiesce mode ([`server::Running::drain`]).
//!
//! # Layers
//!
//! One direction of dependency (lower never imports higher):
//! - [`config`]: plain data and its validation; imports nothing else of the crate.
//! - [`wire`]: framing (size limit before allocation), OP_MSG with CRC-32C,
//!   OP_QUERY/OP_REPLY for the legacy handshake, the request decoder — pure
//!   functions over byte slices, fuzzed in `fuzz/`.
//! - [`auth`]: [`auth::jwt`] (token parsing, alg allow-list, claim rules),
//!   [`auth::jwks`] (discovery, per-issuer key cache, just-in-time refresh
//!   under a quiesce period), [`auth::idp`] (IdP selection and the
//!   verified-token cache) and [`auth::oidc`] (the SASL steps). No sockets.
//! - [`authz`]: user and role names, grants that pick the backend identity.
//! - [`backend`]: the upstream — URI parsing, connections, SCRAM-SHA-256,
//!   primary discovery, forwarding replies as they arrive, the pools of
//!   connections per host and backend user that requests lease
//!   ([`backend::pool`], [`backend::upstream`]), and who owns which cursors
//!   and logical sessions ([`backend::ownership`]).
//! - [`runtime`]: the runtime builder and the state sessions share;
//!   [`admission`]: what each client address may hold and has failed.
//! - [`session`]: one client connection, as above.
//! - [`server`]: listener, TLS ([`tls`]), connection limit, signals, reload,
//!   drain; [`fdlimit`]: the file-descriptor limit against `max_connections`.
//! - [`metrics`]: Prometheus registry, the metrics sink, `/metrics`,
//!   `/healthz`, `/readyz`; it reads [`readiness`] (the checks behind
//!   `/readyz` and the background backend probe) at scrape time.
//! - [`audit`]: the audit trail, a sink writing one JSON record per line
//!   through a bounded queue ([`audit::record`] builds the records).
//! - [`admin`]: the admin endpoints (`/admin/...` on the metrics address,
//!   behind a bearer token): reload, JWKS refresh and revocation, the open
//!   sessions ([`session::registry`]) and closing one. Its token type is a
//!   leaf the runtime builder reads; its router sits below [`server`], which
//!   hands it the reload function SIGHUP uses. The wire side, mongod's
//!   `oidcListKeys`/`oidcRefreshKeys` for admin grants, is
//!   [`session::admin`].
//! - [`memory`]: freed memory handed back to the system after connections
//!   close (the binary supplies the allocator call).
//! - [`errors`]: MongoDB error codes and replies.
//! - [`selftest`]: the operator's own checks from the command line —
//!   `token` (an access token from a configured IdP by the device flow or
//!   client credentials) and `check --sign-in` (what the proxy would make of
//!   a token, with the detailed reason when it refuses).
//!
//! The development identity provider, development certificates, the
//! SecantusDB launcher and the demo live in the `mongo-oidc-proxy-devkit`
//! workspace member (`devkit/`), used by the tests and the demo binary and
//! never linked into the production binary.

#![forbid(unsafe_code)]
// Tests may panic: that is how they fail.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::unreachable
    )
)]

pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backend;
pub mod config;
pub mod errors;
pub mod fdlimit;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod layering;
pub mod memory;
pub mod metrics;
pub mod readiness;
pub mod runtime;
pub mod selftest;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;
