//! JWKS documents as an IdP could serve them. Must never panic; every key
//! that loads has a unique, non-empty kid.
//! Run from fuzz/: `cargo fuzz run jwks corpus/jwks seeds/jwks`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongo_oidc_proxy::auth::jwks;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = jwks::parse_jwks(data) {
        let mut kids: Vec<&str> = set.iter().map(|k| k.kid.as_str()).collect();
        assert!(kids.iter().all(|k| !k.is_empty()));
        kids.sort_unstable();
        kids.dedup();
        assert_eq!(kids.len(), set.len());
    }
});
