//! Thin wrapper: the target and its invariants are
//! `mongo_oidc_proxy::fuzzing::jwt` (input format in its doc and in
//! fuzz/README.md). Run from fuzz/: `cargo +nightly fuzz run jwt corpus/jwt seeds/jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mongo_oidc_proxy::fuzzing::jwt(data));
