//! Thin wrapper: the target and its invariants are
//! `mongo_oidc_proxy::fuzzing::jwks` (input format in its doc and in
//! fuzz/README.md). Run from fuzz/: `cargo +nightly fuzz run jwks corpus/jwks seeds/jwks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mongo_oidc_proxy::fuzzing::jwks(data));
