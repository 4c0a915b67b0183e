//! Token parsing without a network or keys: split, header (alg allow-list),
//! claims. Must never panic; a token that parses must also split again.
//! Run from fuzz/: `cargo fuzz run jwt corpus/jwt seeds/jwt` (new inputs go to the first, git-ignored, folder).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongo_oidc_proxy::auth::jwt;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if jwt::parse_unverified(token, jwt::DEFAULT_MAX_TOKEN_SIZE).is_ok() {
        let jws = jwt::split(token, jwt::DEFAULT_MAX_TOKEN_SIZE).expect("parsed token splits");
        assert_eq!(
            jws.signing_input.len() + 1 + jws.signature_b64.len(),
            token.len()
        );
    }
    // The decoded parts are parsed on their own too, to reach the JSON
    // code without having to find valid base64 first.
    let _ = jwt::parse_header(data);
    if let Ok(claims) = jwt::parse_claims(data) {
        let _ = jwt::check_times(claims.exp, claims.nbf, 1_700_000_000);
    }
});
