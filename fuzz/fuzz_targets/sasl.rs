//! The SASL layer over arbitrary bytes: the MONGODB-OIDC payload document
//! (`{n}` / `{jwt}`), and `saslStart` / `saslContinue` command documents.
//! Must never panic. Run from fuzz/: `cargo fuzz run sasl corpus/sasl seeds/sasl`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongo_oidc_proxy::auth::oidc;

fuzz_target!(|data: &[u8]| {
    let _ = oidc::parse_payload(data);
    if let Ok(doc) = bson::RawDocument::from_bytes(data) {
        if let Ok(start) = oidc::parse_sasl_start(doc, "$external") {
            let _ = oidc::parse_payload(&start.payload.bytes);
        }
        let _ = oidc::parse_sasl_continue(doc);
    }
});
