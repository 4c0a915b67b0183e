//! Tests of the layering rules `lib.rs` describes, and of the few values
//! that are deliberately kept twice so that a lower layer imports nothing.

use std::path::Path;

/// `src/config/` is a leaf: it names no other module of the crate, so every
/// module can use the config types and config can be tested on its own.
/// Checks that need another module belong to that module's constructor.
#[test]
fn config_imports_no_other_module_of_the_crate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let outside = line
                .match_indices("crate::")
                .any(|(at, _)| !line[at..].starts_with("crate::config"));
            assert!(
                !outside,
                "{}:{}: config must not import other modules of the crate: {line}",
                path.display(),
                n + 1
            );
        }
    }
    assert!(seen >= 4, "found only {seen} files in {}", dir.display());
}

#[test]
fn config_and_wire_agree_on_the_default_message_size() {
    assert_eq!(
        crate::config::DEFAULT_MAX_MESSAGE_SIZE,
        crate::wire::DEFAULT_MAX_MESSAGE_SIZE
    );
}

#[test]
fn config_and_jwks_agree_on_which_urls_are_accepted() {
    for url in [
        "https://idp.example.com",
        "https://idp.example.com/oauth2/default",
        "http://localhost:8080/",
        "http://LOCALHOST/",
        "http://127.0.0.1:9/",
        "http://127.8.9.10/",
        "http://[::1]:80/",
        "http://idp.example.com",
        "http://10.0.0.1/",
        "ftp://idp.example.com",
        "file:///etc/passwd",
        "not a url",
        "",
        "https://",
    ] {
        assert_eq!(
            crate::config::url_rule(url),
            crate::auth::jwks::check_url(url).map(|_| ()),
            "{url}"
        );
    }
}
