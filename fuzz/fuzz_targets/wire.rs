//! Thin wrapper: the target and its invariants are
//! `mongo_oidc_proxy::fuzzing::wire` (input format in its doc and in
//! fuzz/README.md). Run from fuzz/: `cargo +nightly fuzz run wire corpus/wire seeds/wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mongo_oidc_proxy::fuzzing::wire(data));
