//! The development kit of mongo-oidc-proxy, kept out of the production
//! binary: a development identity provider that issues tokens ([`devidp`]),
//! development certificates ([`devcerts`]), the SecantusDB launcher
//! ([`demo::secantus`]) and the demo ([`demo`]). The demo runs as its own
//! binary, `mongo-oidc-proxy-demo`; the tests use this crate as a
//! dev-dependency.

pub mod demo;
pub mod devcerts;
pub mod devidp;
