//! Audit records: one JSON object per line, built from the session and
//! operator events. Pure: the time is an argument, so every record's shape
//! is unit-tested.
//!
//! Records carry names, labels, codes and counts only. No token, no
//! password, no document, and no failure detail text (it can quote token
//! fields an attacker chose): a failed sign-in records its reason label.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::session::events::{ConnInfo, Event, OperatorEvent};
use crate::session::phase::Access;

/// `time` of every record: RFC 3339, UTC, milliseconds.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now).to_string()
}

/// Milliseconds with microsecond resolution.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_address: Option<SocketAddr>,
    #[serde(flatten)]
    fields: Fields<'a>,
}

/// The IdP's `log_claims` as a JSON object, in configured order; a claim
/// named twice in the config is written once.
struct Claims<'a>(&'a [(String, String)]);

impl Serialize for Claims<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            let seen = self.0.iter().take(i).any(|(n, _)| n == name);
            if !seen {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Fields<'a> {
    SignIn {
        issuer: &'a str,
        user: &'a str,
        roles: &'a [String],
        claims: Claims<'a>,
        flow: &'static str,
        /// Index of the matching `[[grant]]`; null when none matches.
        grant: Option<usize>,
        backend_user: Option<&'a str>,
        reauthentication: bool,
        app_name: Option<&'a str>,
    },
    SignInFailed {
        flow: &'static str,
        reason: &'static str,
    },
    ReauthenticationRefused {
        code: i32,
    },
    Refused {
        command: &'a str,
        database: Option<&'a str>,
        code: i32,
        reason: &'static str,
    },
    Expired {
        user: &'a str,
        why: &'static str,
    },
    SessionEnd {
        reason: &'static str,
        user: Option<&'a str>,
        duration_ms: f64,
        commands: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
    },
    Command {
        command: &'a str,
        database: Option<&'a str>,
        collection: Option<&'a str>,
        /// Null when the reply was not looked at (not yet buffered whole).
        ok: Option<bool>,
        code: Option<i32>,
        duration_ms: f64,
    },
    Reload {
        ok: bool,
        config: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        changes: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    Admin {
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<&'a str>,
        outcome: &'static str,
        detail: &'a str,
        source: &'a str,
    },
}

/// Every record type, for the documentation test.
pub const TYPES: [&str; 9] = [
    "sign_in",
    "sign_in_failed",
    "reauthentication_refused",
    "refused",
    "expired",
    "session_end",
    "command",
    "reload",
    "admin",
];

/// Whether an event becomes a record at all: the sink checks this before
/// it looks at the clock or formats anything.
pub fn is_audited(event: &Event<'_>, commands: bool) -> bool {
    match event {
        Event::SignedIn { .. }
        | Event::SignInFailed { .. }
        | Event::ReauthenticationRefused { .. }
        | Event::Refused { .. }
        | Event::Expired { .. }
        | Event::SessionEnded { .. } => true,
        Event::Relayed { .. } => commands,
        Event::Command { .. }
        | Event::WireError { .. }
        | Event::Backend { .. }
        | Event::BackendConnected { .. }
        | Event::Leased { .. }
        | Event::ClientIo { .. }
        | Event::LeaseFailed { .. }
        | Event::AuthStep { .. }
        | Event::LimitHit { .. }
        | Event::FailPointSet { .. }
        | Event::FailPointFired { .. } => false,
    }
}

/// The line for a session event (without its newline), or `None` when the
/// event is not audited (`commands`: whether relayed commands are).
pub fn session(
    now: SystemTime,
    conn: &ConnInfo,
    event: &Event<'_>,
    commands: bool,
) -> Option<String> {
    if !is_audited(event, commands) {
        return None;
    }
    let (kind, fields) = match event {
        Event::SignedIn {
            session,
            reauthenticated,
            issuer,
            app_name,
        } => {
            let (grant, backend_user) = match &session.access {
                Access::Granted { grant, backend, .. } => {
                    (Some(*grant), Some(backend.user.as_str()))
                }
                Access::Refused => (None, None),
            };
            let id = &session.identity;
            (
                "sign_in",
                Fields::SignIn {
                    issuer,
                    user: &id.user,
                    roles: &id.roles,
                    claims: Claims(&id.log_claims),
                    flow: session.flow.label(),
                    grant,
                    backend_user,
                    reauthentication: *reauthenticated,
                    app_name: *app_name,
                },
            )
        }
        Event::SignInFailed { failure, flow } => (
            "sign_in_failed",
            Fields::SignInFailed {
                flow: flow.label(),
                reason: failure.reason(),
            },
        ),
        Event::ReauthenticationRefused { code } => (
            "reauthentication_refused",
            Fields::ReauthenticationRefused { code: *code },
        ),
        Event::Refused {
            name,
            db,
            code,
            reason,
        } => (
            "refused",
            Fields::Refused {
                command: name,
                database: *db,
                code: *code,
                reason: reason.label(),
            },
        ),
        Event::Expired { user, why } => (
            "expired",
            Fields::Expired {
                user,
                why: why.label(),
            },
        ),
        Event::SessionEnded {
            reason,
            counts,
            duration,
            user,
        } => (
            "session_end",
            Fields::SessionEnd {
                reason: reason.label(),
                user: *user,
                duration_ms: millis(*duration),
                commands: counts.commands,
                bytes_from_client: counts.bytes_from_client,
                bytes_to_client: counts.bytes_to_client,
            },
        ),
        Event::Relayed {
            command,
            db,
            collection,
            status,
            duration,
            ..
        } => (
            "command",
            Fields::Command {
                command,
                database: *db,
                collection: *collection,
                ok: status.map(|s| s.ok),
                code: status.and_then(|s| s.code),
                duration_ms: millis(*duration),
            },
        ),
        _ => return None,
    };
    line(&Record {
        time: timestamp(now),
        kind,
        connection_id: Some(conn.id),
        client_address: Some(conn.peer),
        fields,
    })
}

/// The line for an operator event.
pub fn operator(now: SystemTime, event: &OperatorEvent<'_>) -> Option<String> {
    let (kind, fields) = match event {
        OperatorEvent::Reload { ok, path, detail } => (
            "reload",
            Fields::Reload {
                ok: *ok,
                config: path,
                changes: ok.then_some(*detail),
                error: (!ok).then_some(*detail),
            },
        ),
        OperatorEvent::Admin {
            action,
            target,
            outcome,
            detail,
            source,
        } => (
            "admin",
            Fields::Admin {
                action: action.label(),
                target: *target,
                outcome: outcome.label(),
                detail,
                source,
            },
        ),
    };
    line(&Record {
        time: timestamp(now),
        kind,
        connection_id: None,
        client_address: None,
        fields,
    })
}

fn line(record: &Record<'_>) -> Option<String> {
    // Serialising strings and numbers into a String cannot fail.
    serde_json::to_string(record).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use serde_json::{json, Value};

    use crate::session::events::{AdminAction, AdminOutcome};

    use super::*;
    use crate::auth::{AuthFailure, Identity};
    use crate::authz::BackendIdentity;
    use crate::session::events::Counts;
    use crate::session::phase::{Expiry, Flow, SignedIn};
    use crate::session::{CloseReason, Refused};
    use crate::wire::op_msg::ReplyStatus;

    /// 2024-05-06T07:08:09.123Z
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_714_979_289_123)
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            id: 7,
            peer: "192.0.2.10:51234".parse().unwrap(),
        }
    }

    fn parse(line: Option<String>) -> Value {
        let line = line.expect("a record");
        assert!(!line.contains('\n'), "one line: {line}");
        serde_json::from_str(&line).unwrap()
    }

    fn signed_in(access: Access) -> SignedIn {
        SignedIn {
            identity: Identity {
                idp: 0,
                principal: "alice".into(),
                user: "okta/alice".into(),
                roles: vec!["okta/dba".into(), "okta/ops".into()],
                expires_at: 0,
                log_claims: vec![
                    ("iss".into(), "https://idp.example.com".into()),
                    ("sub".into(), "alice".into()),
                    ("iss".into(), "again".into()),
                ],
            },
            flow: Flow::Human,
            access,
            idp_fingerprint: 0,
            key_generation: None,
            runtime_version: 1,
            signed_in_at: now(),
            expired: None,
        }
    }

    fn granted() -> Access {
        Access::Granted {
            grant: 1,
            backend: Arc::new(BackendIdentity {
                user: "dba".into(),
                password: "s3cret-password".into(),
            }),
            expires: None,
            admin: false,
        }
    }

    #[test]
    fn sign_in_has_every_field_and_no_secret() {
        let signed_in = signed_in(granted());
        let event = Event::SignedIn {
            session: &signed_in,
            reauthenticated: true,
            issuer: "https://idp.example.com",
            app_name: Some("billing"),
        };
        let line = session_line(&event);
        assert!(!line.contains("s3cret-password"), "{line}");
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "sign_in",
                "connection_id": 7,
                "client_address": "192.0.2.10:51234",
                "issuer": "https://idp.example.com",
                "user": "okta/alice",
                "roles": ["okta/dba", "okta/ops"],
                "claims": { "iss": "https://idp.example.com", "sub": "alice" },
                "flow": "human",
                "grant": 1,
                "backend_user": "dba",
                "reauthentication": true,
                "app_name": "billing",
            })
        );
        // The fields come in a fixed order: time and type first.
        assert!(
            line.starts_with(
                r#"{"time":"2024-05-06T07:08:09.123Z","type":"sign_in","connection_id":7,"#
            ),
            "{line}"
        );
    }

    fn session_line(event: &Event<'_>) -> String {
        session(now(), &conn(), event, false).expect("a record")
    }

    #[test]
    fn a_sign_in_without_a_grant_has_null_grant_and_backend_user() {
        let signed_in = signed_in(Access::Refused);
        let v = parse(Some(session_line(&Event::SignedIn {
            session: &signed_in,
            reauthenticated: false,
            issuer: "i",
            app_name: None,
        })));
        assert_eq!(v["grant"], Value::Null);
        assert_eq!(v["backend_user"], Value::Null);
        assert_eq!(v["app_name"], Value::Null);
        assert_eq!(v["reauthentication"], false);
    }

    #[test]
    fn a_failed_sign_in_records_the_reason_label_not_the_detail() {
        let failure = AuthFailure::Issuer("Token issuer 'eyJhbGciOi.evil' is not accepted".into());
        let line = session_line(&Event::SignInFailed {
            failure: &failure,
            flow: Flow::Speculative,
        });
        assert!(!line.contains("eyJ") && !line.contains("evil"), "{line}");
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "sign_in_failed",
                "connection_id": 7,
                "client_address": "192.0.2.10:51234",
                "flow": "speculative",
                "reason": "issuer",
            })
        );
    }

    #[test]
    fn refusals_expiries_and_session_ends() {
        let v = parse(Some(session_line(&Event::Refused {
            name: "find",
            db: Some("app"),
            code: 391,
            reason: Refused::ReauthenticationRequired,
        })));
        assert_eq!(
            (
                &v["type"],
                &v["command"],
                &v["database"],
                &v["code"],
                &v["reason"]
            ),
            (
                &json!("refused"),
                &json!("find"),
                &json!("app"),
                &json!(391),
                &json!("reauthentication_required")
            )
        );
        let v = parse(Some(session_line(&Event::ReauthenticationRefused {
            code: 7070100,
        })));
        assert_eq!(
            (&v["type"], &v["code"]),
            (&json!("reauthentication_refused"), &json!(7070100))
        );
        let v = parse(Some(session_line(&Event::Expired {
            user: "okta/alice",
            why: Expiry::KeyWithdrawn,
        })));
        assert_eq!(
            (&v["type"], &v["user"], &v["why"]),
            (
                &json!("expired"),
                &json!("okta/alice"),
                &json!("key_withdrawn")
            )
        );
        let v = parse(Some(session_line(&Event::SessionEnded {
            reason: CloseReason::ClientClosed,
            counts: Counts {
                commands: 4,
                bytes_from_client: 1000,
                bytes_to_client: 2500,
            },
            duration: Duration::from_micros(1_234_567),
            user: Some("okta/alice"),
        })));
        assert_eq!(
            v,
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "session_end",
                "connection_id": 7,
                "client_address": "192.0.2.10:51234",
                "reason": "client_closed",
                "user": "okta/alice",
                "duration_ms": 1234.567,
                "commands": 4,
                "bytes_from_client": 1000,
                "bytes_to_client": 2500,
            })
        );
    }

    fn relayed(status: Option<ReplyStatus>) -> Event<'static> {
        Event::Relayed {
            to_backend: 100,
            to_client: 200,
            replies: 1,
            command: "insert",
            db: Some("app"),
            collection: Some("things"),
            status,
            duration: Duration::from_micros(2_500),
        }
    }

    #[test]
    fn commands_are_recorded_only_when_asked() {
        assert_eq!(session(now(), &conn(), &relayed(None), false), None);
        let failed = ReplyStatus {
            ok: false,
            code: Some(13),
        };
        let v = parse(session(now(), &conn(), &relayed(Some(failed)), true));
        assert_eq!(
            v,
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "command",
                "connection_id": 7,
                "client_address": "192.0.2.10:51234",
                "command": "insert",
                "database": "app",
                "collection": "things",
                "ok": false,
                "code": 13,
                "duration_ms": 2.5,
            })
        );
        let v = parse(session(now(), &conn(), &relayed(None), true));
        assert_eq!((&v["ok"], &v["code"]), (&Value::Null, &Value::Null));
    }

    #[test]
    fn other_events_are_not_recorded() {
        for event in [
            Event::Command {
                name: "find",
                disposition: crate::session::Disposition::Relayed,
            },
            Event::AuthStep { seconds: 0.1 },
            Event::BackendConnected { seconds: 0.1 },
            Event::WireError {
                kind: "k",
                detail: "d",
            },
        ] {
            assert_eq!(session(now(), &conn(), &event, true), None, "{event:?}");
        }
    }

    #[test]
    fn operator_records_have_no_connection() {
        let v = parse(operator(
            now(),
            &OperatorEvent::Reload {
                ok: true,
                path: "/etc/proxy.toml",
                detail: "1 grant(s), was 2",
            },
        ));
        assert_eq!(
            v,
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "reload",
                "ok": true,
                "config": "/etc/proxy.toml",
                "changes": "1 grant(s), was 2",
            })
        );
        let v = parse(operator(
            now(),
            &OperatorEvent::Reload {
                ok: false,
                path: "/etc/proxy.toml",
                detail: "grant[0].role: bad",
            },
        ));
        assert_eq!(
            (&v["ok"], &v["error"]),
            (&json!(false), &json!("grant[0].role: bad"))
        );
        assert!(v.get("changes").is_none());
        let v = parse(operator(
            now(),
            &OperatorEvent::Admin {
                action: AdminAction::JwksRefresh,
                target: Some("https://idp.example.com"),
                outcome: AdminOutcome::Ok,
                detail: "2 keys loaded",
                source: "http 127.0.0.1:9216",
            },
        ));
        assert_eq!(
            v,
            json!({
                "time": "2024-05-06T07:08:09.123Z",
                "type": "admin",
                "action": "jwks_refresh",
                "target": "https://idp.example.com",
                "outcome": "ok",
                "detail": "2 keys loaded",
                "source": "http 127.0.0.1:9216",
            })
        );
    }

    #[test]
    fn the_readme_lists_every_record_type() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        for kind in TYPES {
            assert!(
                readme.contains(&format!("| `{kind}` |"))
                    || readme.contains(&format!("| `{kind}` (")),
                "README.md's Audit trail table lacks `{kind}`"
            );
        }
    }

    #[test]
    fn names_with_quotes_and_control_characters_stay_on_one_line() {
        let v = parse(Some(session_line(&Event::Refused {
            name: "fi\"nd\n{\"type\":\"forged\"}",
            db: Some("a\u{7}pp"),
            code: 13,
            reason: Refused::Unauthenticated,
        })));
        assert_eq!(v["type"], "refused");
        assert_eq!(v["command"], "fi\"nd\n{\"type\":\"forged\"}");
    }
}
