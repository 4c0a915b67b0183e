//! Thin wrapper: the target and its invariants are
//! `mongo_oidc_proxy::fuzzing::hello` (input format in its doc and in
//! fuzz/README.md). Run from fuzz/: `cargo +nightly fuzz run hello corpus/hello seeds/hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mongo_oidc_proxy::fuzzing::hello(data));
