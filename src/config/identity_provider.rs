//! Validation of `[[identity_provider]]` entries (mongod's rules for `oidcIdentityProviders`).
//! Each error names the field as `identity_provider[i].name` and says what to do.

use super::{ConfigError, IdentityProviderConfig};

/// Shortest non-zero JWKS poll period, as MongoDB requires.
pub(crate) const MIN_POLL_SECS: u64 = 10;
/// Longest `jwks_fetch_timeout_secs`: a sign-in waits this long at most.
pub(crate) const MAX_FETCH_TIMEOUT_SECS: u64 = 60;

fn err(i: usize, name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("identity_provider[{i}].{name}"), message)
}

pub(crate) fn validate(idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    for (i, idp) in idps.iter().enumerate() {
        validate_one(i, idp)?;
    }
    check_human_flow_patterns(idps)?;
    check_pattern_order(idps)?;
    check_duplicates(idps)?;
    check_same_issuer_settings(idps)
}

fn validate_one(i: usize, c: &IdentityProviderConfig) -> Result<(), ConfigError> {
    check_required(i, c)?;
    check_url(i, "issuer", &c.issuer)?;
    if let Some(uri) = &c.jwks_uri {
        check_url(i, "jwks_uri", uri)?;
    }
    check_prefix(i, &c.auth_name_prefix)?;
    check_human_and_claims(i, c)?;
    check_pattern(i, c.match_pattern.as_deref())?;
    check_list(i, "request_scopes", &c.request_scopes)?;
    check_list(i, "log_claims", &c.log_claims)?;
    if c.jwks_poll_secs != 0 && c.jwks_poll_secs < MIN_POLL_SECS {
        return Err(err(
            i,
            "jwks_poll_secs",
            format!(
                "must be 0 (no periodic refresh) or at least {MIN_POLL_SECS} seconds, got {}",
                c.jwks_poll_secs
            ),
        ));
    }
    if !(1..=MAX_FETCH_TIMEOUT_SECS).contains(&c.jwks_fetch_timeout_secs) {
        return Err(err(
            i,
            "jwks_fetch_timeout_secs",
            format!(
                "must be between 1 and {MAX_FETCH_TIMEOUT_SECS} seconds (a sign-in with an \
                 unknown key waits this long at most), got {}",
                c.jwks_fetch_timeout_secs
            ),
        ));
    }
    if c.tls_ca_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(err(
            i,
            "tls_ca_file",
            "must not be empty: name a PEM file of CA certificates, or omit it to trust the \
             system's roots only",
        ));
    }
    Ok(())
}

fn check_required(i: usize, c: &IdentityProviderConfig) -> Result<(), ConfigError> {
    let required = [
        (
            "issuer",
            &c.issuer,
            "set it to the IdP's issuer URL, equal to the tokens' 'iss'",
        ),
        (
            "audience",
            &c.audience,
            "set it to the audience ('aud') the tokens carry",
        ),
        (
            "auth_name_prefix",
            &c.auth_name_prefix,
            "set the prefix of user and role names, e.g. \"okta\"",
        ),
        (
            "principal_name",
            &c.principal_name,
            "name the claim holding the principal, or omit it for 'sub'",
        ),
    ];
    for (name, value, what) in required {
        if value.trim().is_empty() {
            return Err(err(i, name, format!("must not be empty: {what}")));
        }
    }
    Ok(())
}

fn check_url(i: usize, name: &str, url: &str) -> Result<(), ConfigError> {
    url_rule(url).map_err(|m| err(i, name, format!("'{url}' is not accepted: {m}")))
}

/// The rule for issuer and JWKS URLs: https, or http to a loopback host.
///
/// The same rule as `auth::jwks::check_url` (which also guards redirects at
/// run time); config keeps its own copy so that it imports no other module
/// of the crate. src/layering.rs tests that the two agree.
pub(crate) fn url_rule(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must use https (http is only allowed for loopback hosts)".into()),
        other => Err(format!("scheme '{other}' is not allowed, use https")),
    }
}

fn check_prefix(i: usize, prefix: &str) -> Result<(), ConfigError> {
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    Err(err(
        i,
        "auth_name_prefix",
        format!("'{prefix}' may only contain letters, digits, '_' and '-'"),
    ))
}

fn check_human_and_claims(i: usize, c: &IdentityProviderConfig) -> Result<(), ConfigError> {
    let no_client_id = c.client_id.as_deref().is_none_or(|s| s.trim().is_empty());
    if c.supports_human_flows && no_client_id {
        return Err(err(
            i,
            "client_id",
            "is required when supports_human_flows = true: set the OAuth client id \
             human-flow clients use, or set supports_human_flows = false",
        ));
    }
    if c.use_authorization_claim && c.authorization_claim.trim().is_empty() {
        return Err(err(
            i,
            "authorization_claim",
            "must not be empty when use_authorization_claim = true: name the claim \
             holding the groups, or set use_authorization_claim = false",
        ));
    }
    Ok(())
}

fn check_pattern(i: usize, pattern: Option<&str>) -> Result<(), ConfigError> {
    let Some(pattern) = pattern else {
        return Ok(());
    };
    if pattern.is_empty() {
        return Err(err(
            i,
            "match_pattern",
            "must not be empty: omit it instead",
        ));
    }
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        err(
            i,
            "match_pattern",
            format!("is not a valid regular expression: {e}"),
        )
    })
}

fn check_list(i: usize, name: &str, items: &[String]) -> Result<(), ConfigError> {
    match items.iter().position(|s| s.trim().is_empty()) {
        Some(j) => Err(ConfigError::new(
            format!("identity_provider[{i}].{name}[{j}]"),
            "must not be empty: remove the empty string",
        )),
        None => Ok(()),
    }
}

fn check_human_flow_patterns(idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    let human = idps.iter().filter(|c| c.supports_human_flows).count();
    if human < 2 {
        return Ok(());
    }
    match idps
        .iter()
        .position(|c| c.supports_human_flows && c.match_pattern.is_none())
    {
        Some(i) => Err(err(
            i,
            "match_pattern",
            format!(
                "is required because {human} identity providers have supports_human_flows = true: \
                 add a pattern matching this IdP's user names"
            ),
        )),
        None => Ok(()),
    }
}

fn check_pattern_order(idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    let Some(first_without) = idps.iter().position(|c| c.match_pattern.is_none()) else {
        return Ok(());
    };
    let later_with = idps
        .iter()
        .enumerate()
        .skip(first_without + 1)
        .find(|(_, c)| c.match_pattern.is_some());
    match later_with {
        Some((i, _)) => Err(err(
            i,
            "match_pattern",
            format!(
                "All IdPs without matchPatterns must be listed after those with matchPatterns: \
                 move this entry before identity_provider[{first_without}]"
            ),
        )),
        None => Ok(()),
    }
}

fn check_duplicates(idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    for (i, c) in idps.iter().enumerate() {
        let earlier = idps
            .iter()
            .take(i)
            .position(|o| o.issuer == c.issuer && o.audience == c.audience);
        if let Some(k) = earlier {
            return Err(err(
                i,
                "audience",
                format!(
                    "Duplicate configuration for issuer-audience pair ('{}', '{}'), \
                     already used by identity_provider[{k}]: remove one of them",
                    c.issuer, c.audience
                ),
            ));
        }
    }
    Ok(())
}

/// Settings of the one JWKS cache an issuer's entries share must agree.
fn check_same_issuer_settings(idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    for (i, c) in idps.iter().enumerate() {
        let Some(k) = idps.iter().take(i).position(|o| o.issuer == c.issuer) else {
            continue;
        };
        let Some(first) = idps.get(k) else { continue };
        let differs: Option<(&str, String)> = if first.jwks_poll_secs != c.jwks_poll_secs {
            Some(("jwks_poll_secs", first.jwks_poll_secs.to_string()))
        } else if first.jwks_min_quiesce_secs != c.jwks_min_quiesce_secs {
            Some((
                "jwks_min_quiesce_secs",
                first.jwks_min_quiesce_secs.to_string(),
            ))
        } else if first.jwks_uri != c.jwks_uri {
            Some(("jwks_uri", format!("{:?}", first.jwks_uri)))
        } else if first.tls_ca_file != c.tls_ca_file {
            Some(("tls_ca_file", format!("{:?}", first.tls_ca_file)))
        } else if first.jwks_fetch_timeout_secs != c.jwks_fetch_timeout_secs {
            Some((
                "jwks_fetch_timeout_secs",
                first.jwks_fetch_timeout_secs.to_string(),
            ))
        } else {
            None
        };
        if let Some((name, value)) = differs {
            return Err(err(
                i,
                name,
                format!(
                    "must equal identity_provider[{k}].{name} ({value}): both use issuer '{}'",
                    c.issuer
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp(issuer: &str, pattern: Option<&str>) -> IdentityProviderConfig {
        IdentityProviderConfig {
            issuer: issuer.into(),
            audience: "api://mongodb".into(),
            auth_name_prefix: "okta".into(),
            client_id: Some("client".into()),
            jwks_uri: None,
            match_pattern: pattern.map(Into::into),
            request_scopes: vec![],
            principal_name: "sub".into(),
            authorization_claim: "groups".into(),
            use_authorization_claim: true,
            supports_human_flows: true,
            jwks_poll_secs: 0,
            jwks_min_quiesce_secs: 60,
            log_claims: vec!["iss".into(), "sub".into()],
            tls_ca_file: None,
            jwks_fetch_timeout_secs: 5,
        }
    }

    fn one(f: impl Fn(&mut IdentityProviderConfig)) -> Vec<IdentityProviderConfig> {
        let mut c = idp("https://idp.example.com", None);
        f(&mut c);
        vec![c]
    }

    fn machine(issuer: &str) -> IdentityProviderConfig {
        let mut c = idp(issuer, None);
        c.supports_human_flows = false;
        c.client_id = None;
        c
    }

    /// Asserts the error's field and that its message contains `says`.
    fn assert_refused(configs: &[IdentityProviderConfig], field: &str, says: &str) {
        let e = validate(configs).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.message.contains(says),
            "{field}: '{}' lacks '{says}'",
            e.message
        );
    }

    #[test]
    fn valid_configs() {
        let ok: Vec<Vec<IdentityProviderConfig>> = vec![
            vec![],
            one(|_| {}),
            one(|c| c.issuer = "http://127.0.0.1:8080".into()),
            one(|c| c.issuer = "http://localhost:8080/realms/x".into()),
            one(|c| c.auth_name_prefix = "_-_".into()),
            one(|c| c.auth_name_prefix = "my-prefix".into()),
            one(|c| c.jwks_poll_secs = 10),
            one(|c| c.jwks_fetch_timeout_secs = 60),
            one(|c| c.tls_ca_file = Some("/etc/ssl/private-ca.pem".into())),
            one(|c| {
                c.use_authorization_claim = false;
                c.authorization_claim = String::new();
            }),
            vec![machine("https://a.example"), machine("https://b.example")],
            vec![
                idp("https://a.example", Some("@a$")),
                idp("https://b.example", Some("@b$")),
                machine("https://c.example"),
            ],
        ];
        for configs in ok {
            assert_eq!(validate(&configs), Ok(()), "{configs:?}");
        }
    }

    #[test]
    fn per_entry_rules() {
        let f = |name: &str| format!("identity_provider[0].{name}");
        let cases: Vec<(Vec<IdentityProviderConfig>, String, &str)> = vec![
            (
                one(|c| c.issuer = String::new()),
                f("issuer"),
                "must not be empty",
            ),
            (
                one(|c| c.audience = " ".into()),
                f("audience"),
                "must not be empty",
            ),
            (
                one(|c| c.auth_name_prefix = String::new()),
                f("auth_name_prefix"),
                "must not be empty",
            ),
            (
                one(|c| c.principal_name = String::new()),
                f("principal_name"),
                "must not be empty",
            ),
            (
                one(|c| c.issuer = "http://idp.example.com".into()),
                f("issuer"),
                "must use https",
            ),
            (
                one(|c| c.issuer = "idp.example.com".into()),
                f("issuer"),
                "not a valid URL",
            ),
            (
                one(|c| c.jwks_uri = Some("http://keys.example.com".into())),
                f("jwks_uri"),
                "must use https",
            ),
            (
                one(|c| c.auth_name_prefix = "foo.bar".into()),
                f("auth_name_prefix"),
                "may only contain letters, digits, '_' and '-'",
            ),
            (
                one(|c| c.auth_name_prefix = "foo/bar".into()),
                f("auth_name_prefix"),
                "may only contain",
            ),
            (
                one(|c| c.auth_name_prefix = "$foobar".into()),
                f("auth_name_prefix"),
                "may only contain",
            ),
            (
                one(|c| c.auth_name_prefix = "hello world".into()),
                f("auth_name_prefix"),
                "may only contain",
            ),
            (
                one(|c| c.auth_name_prefix = "\"howdy\"".into()),
                f("auth_name_prefix"),
                "may only contain",
            ),
            (
                one(|c| c.client_id = None),
                f("client_id"),
                "is required when supports_human_flows = true",
            ),
            (
                one(|c| c.client_id = Some(String::new())),
                f("client_id"),
                "is required when supports_human_flows = true",
            ),
            (
                one(|c| c.authorization_claim = String::new()),
                f("authorization_claim"),
                "must not be empty when use_authorization_claim = true",
            ),
            (
                one(|c| c.match_pattern = Some("(".into())),
                f("match_pattern"),
                "is not a valid regular expression",
            ),
            (
                one(|c| c.match_pattern = Some(String::new())),
                f("match_pattern"),
                "must not be empty",
            ),
            (
                one(|c| c.request_scopes = vec!["openid".into(), String::new()]),
                f("request_scopes[1]"),
                "must not be empty",
            ),
            (
                one(|c| c.log_claims = vec![String::new()]),
                f("log_claims[0]"),
                "must not be empty",
            ),
            (
                one(|c| c.jwks_poll_secs = 9),
                f("jwks_poll_secs"),
                "must be 0 (no periodic refresh) or at least 10 seconds, got 9",
            ),
            (one(|c| c.jwks_poll_secs = 1), f("jwks_poll_secs"), "got 1"),
            (
                one(|c| c.jwks_fetch_timeout_secs = 0),
                f("jwks_fetch_timeout_secs"),
                "must be between 1 and 60 seconds (a sign-in with an unknown key waits this \
                 long at most), got 0",
            ),
            (
                one(|c| c.jwks_fetch_timeout_secs = 61),
                f("jwks_fetch_timeout_secs"),
                "got 61",
            ),
            (
                one(|c| c.tls_ca_file = Some("".into())),
                f("tls_ca_file"),
                "must not be empty",
            ),
        ];
        for (configs, field, says) in cases {
            assert_refused(&configs, &field, says);
        }
    }

    #[test]
    fn several_human_flow_idps_need_patterns() {
        assert_refused(
            &[
                idp("https://a.example", Some("@a$")),
                idp("https://b.example", None),
            ],
            "identity_provider[1].match_pattern",
            "is required because 2 identity providers have supports_human_flows = true",
        );
    }

    #[test]
    fn idps_without_pattern_come_last() {
        assert_refused(
            &[
                machine("https://m.example"),
                idp("https://a.example", Some("@a$")),
            ],
            "identity_provider[1].match_pattern",
            "All IdPs without matchPatterns must be listed after those with matchPatterns: \
             move this entry before identity_provider[0]",
        );
    }

    #[test]
    fn duplicate_issuer_audience_pair() {
        assert_refused(
            &[machine("https://a.example"), machine("https://a.example")],
            "identity_provider[1].audience",
            "Duplicate configuration for issuer-audience pair ('https://a.example', 'api://mongodb'), \
             already used by identity_provider[0]",
        );
    }

    #[test]
    fn one_issuer_one_jwks_setting() {
        let pair = |f: &dyn Fn(&mut IdentityProviderConfig)| {
            let mut second = machine("https://a.example");
            second.audience = "other".into();
            f(&mut second);
            vec![machine("https://a.example"), second]
        };
        assert_eq!(validate(&pair(&|_| {})), Ok(()));
        assert_refused(
            &pair(&|c| c.jwks_poll_secs = 60),
            "identity_provider[1].jwks_poll_secs",
            "must equal identity_provider[0].jwks_poll_secs (0): both use issuer 'https://a.example'",
        );
        assert_refused(
            &pair(&|c| c.jwks_min_quiesce_secs = 0),
            "identity_provider[1].jwks_min_quiesce_secs",
            "must equal identity_provider[0].jwks_min_quiesce_secs (60)",
        );
        assert_refused(
            &pair(&|c| c.jwks_uri = Some("https://a.example/keys".into())),
            "identity_provider[1].jwks_uri",
            "must equal identity_provider[0].jwks_uri",
        );
        assert_refused(
            &pair(&|c| c.tls_ca_file = Some("ca.pem".into())),
            "identity_provider[1].tls_ca_file",
            "must equal identity_provider[0].tls_ca_file (None)",
        );
        assert_refused(
            &pair(&|c| c.jwks_fetch_timeout_secs = 9),
            "identity_provider[1].jwks_fetch_timeout_secs",
            "must equal identity_provider[0].jwks_fetch_timeout_secs (5)",
        );
    }
}
