//! The session's rules as pure functions: `(request, phase, inputs) →
//! action`, and the sign-in transition. Nothing here does I/O, so every rule
//! is unit-tested without TLS or a backend.

use std::time::SystemTime;

use crate::auth::Identity;
use crate::errors::MongoError;
use crate::wire::{Command, DecodeError, Op, OpCode, Request, WireError};

use super::admin::{self, AdminCommand};
use super::failpoint::Then;
use super::phase::{Access, Flow, Phase, SignedIn};
use super::CloseReason;

/// What the decide step reads besides the request and the phase.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// The proxy is draining (SIGTERM): hello answers ShutdownInProgress.
    pub draining: bool,
    /// `[testing] enable_test_commands`: `configureFailPoint` exists.
    pub test_commands: bool,
}

/// Why the proxy refused a command; the `commands_total` disposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unauthenticated,
    NoGrant,
    ReauthenticationRequired,
    OpQuery,
    Compressed,
    Malformed,
    Unsupported,
    Draining,
    /// An admin command from a session whose grant lacks `admin = true`.
    NotAdmin,
    /// Failed on purpose by the `failCommand` fail point.
    FailPoint,
    /// Named a cursor or logical session of another principal.
    Ownership,
}

impl Refused {
    pub const ALL: [Refused; 11] = [
        Refused::Unauthenticated,
        Refused::NoGrant,
        Refused::ReauthenticationRequired,
        Refused::OpQuery,
        Refused::Compressed,
        Refused::Malformed,
        Refused::Unsupported,
        Refused::Draining,
        Refused::NotAdmin,
        Refused::FailPoint,
        Refused::Ownership,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::Unauthenticated => "refused_unauthenticated",
            Refused::NoGrant => "refused_no_grant",
            Refused::ReauthenticationRequired => "reauthentication_required",
            Refused::OpQuery => "refused_op_query",
            Refused::Compressed => "refused_compressed",
            Refused::Malformed => "refused_malformed",
            Refused::Unsupported => "refused_unsupported",
            Refused::Draining => "refused_draining",
            Refused::NotAdmin => "refused_not_admin",
            Refused::FailPoint => "fail_point",
            Refused::Ownership => "refused_not_owner",
        }
    }
}

/// A command the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Ping,
    BuildInfo,
    ConnectionStatus,
    /// `endSessions` before sign-in: there is nothing to end.
    EndSessions,
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer `hello`/`isMaster`; `speculative` allows a
    /// `speculativeAuthenticate` in it to sign the connection in.
    Hello {
        speculative: bool,
    },
    SaslStart,
    SaslContinue,
    Local(Local),
    /// Answer with this error (unless the client asked for no reply).
    Refuse {
        error: MongoError,
        reason: Refused,
    },
    /// Forward to the backend as the session's backend identity.
    Relay(Affinity),
    /// An administrative command the proxy runs itself (admin grants only).
    Admin(AdminCommand),
    /// `configureFailPoint`, for an admin session with test commands on.
    ConfigureFailPoint,
    /// `getParameter`: the proxy's own parameters answered, others relayed.
    GetParameter,
    /// The `failCommand` fail point's error, in place of the command.
    FailPoint(bson::RawDocumentBuf),
    /// Nothing can be answered: close the connection.
    Close(CloseReason),
}

/// What a relayed request needs beyond any pooled connection: the
/// server-side state it continues lives on one host, and an exhaust stream
/// holds its connection until the last reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    None,
    /// `getMore` or `killCursors`: the cursor's host, and its owner.
    Cursor,
    /// A statement, commit or abort of a transaction: its host.
    Transaction,
    /// A `getMore` allowed to stream (exhaustAllowed): the connection is
    /// held until the stream ends.
    Exhaust,
}

/// The affinity of one request, from its command alone.
pub fn affinity(command: &Command<'_>, exhaust_allowed: bool) -> Affinity {
    match command.name {
        "getMore" if exhaust_allowed => Affinity::Exhaust,
        "getMore" | "killCursors" => Affinity::Cursor,
        "commitTransaction" | "abortTransaction" => Affinity::Transaction,
        _ if command.autocommit == Some(false) => Affinity::Transaction,
        _ => Affinity::None,
    }
}

/// The handshake command names, matched case-insensitively as drivers vary.
pub fn is_handshake(name: &str) -> bool {
    name.eq_ignore_ascii_case("hello") || name.eq_ignore_ascii_case("ismaster")
}

/// The rule for one decoded message.
pub fn decide(req: &Request<'_>, phase: &Phase, inputs: Inputs) -> Action {
    let command = match (req.op, &req.command) {
        (Op::Other(op), _) => return Action::Close(unsupported(op)),
        (Op::Compressed { .. }, _) => return refuse_compressed(),
        (Op::Query { .. }, None) => return refuse_op_query(""),
        (_, None) => return Action::Close(CloseReason::MalformedMessage),
        (_, Some(c)) => c,
    };
    if req.op != Op::Msg {
        return decide_op_query(command, phase, inputs);
    }
    if is_handshake(command.name) {
        return hello(phase, inputs);
    }
    match command.name {
        "saslStart" => Action::SaslStart,
        "saslContinue" => Action::SaslContinue,
        "ping" => Action::Local(Local::Ping),
        "buildInfo" | "buildinfo" => Action::Local(Local::BuildInfo),
        "connectionStatus" => Action::Local(Local::ConnectionStatus),
        "endSessions" if phase.is_anonymous() => Action::Local(Local::EndSessions),
        "configureFailPoint" => configure_fail_point(command, phase, inputs),
        "getParameter" => match authorised_relay(command, phase) {
            Action::Relay(_) => Action::GetParameter,
            refused => refused,
        },
        "authenticate" => refuse(
            MongoError::mechanism_unavailable(
                "Received authentication for mechanism MONGODB-X509 which is not enabled; sign in with MONGODB-OIDC",
            ),
            Refused::Unsupported,
        ),
        "logout" => refuse(
            MongoError::command_not_supported(
                "logout is not supported by mongo-oidc-proxy; close the connection to sign out",
            ),
            Refused::Unsupported,
        ),
        name if admin::is_admin_command(name) => admin_command(command, phase),
        _ => match authorised_relay(command, phase) {
            Action::Relay(_) => Action::Relay(affinity(command, req.exhaust_allowed)),
            other => other,
        },
    }
}

/// mongod's order for an admin-only command: its arguments, then the
/// database, then authentication, then the privilege.
fn admin_command(command: &Command<'_>, phase: &Phase) -> Action {
    let name = command.name;
    let parsed = match admin::parse(name, command.body) {
        Ok(c) => c,
        Err(error) => return refuse(error, Refused::Malformed),
    };
    if command.db != Some("admin") {
        return refuse(
            MongoError::unauthorized(format!(
                "{name} may only be run against the admin database."
            )),
            Refused::Unsupported,
        );
    }
    let Some(session) = phase.signed_in() else {
        return refuse(
            MongoError::unauthorized(format!("Command {name} requires authentication")),
            Refused::Unauthenticated,
        );
    };
    if session.expired.is_some() {
        // As for every other command: the driver re-authenticates and retries.
        return refuse(
            MongoError::reauthentication_required(format!(
                "Command {name} requires reauthentication since the current authorization session has expired. Please re-auth."
            )),
            Refused::ReauthenticationRequired,
        );
    }
    if !session.access.is_admin() {
        return refuse(
            MongoError::unauthorized(format!(
                "not authorized on admin to execute command {{ {name}: 1 }}"
            )),
            Refused::NotAdmin,
        );
    }
    Action::Admin(parsed)
}

/// The legacy OP_QUERY is served only for the handshake, as by mongod 5.1+.
fn decide_op_query(command: &Command<'_>, phase: &Phase, inputs: Inputs) -> Action {
    if is_handshake(command.name) {
        hello(phase, inputs)
    } else {
        refuse_op_query(command.name)
    }
}

fn hello(phase: &Phase, inputs: Inputs) -> Action {
    if inputs.draining {
        // mongos's quiesce mode: drivers mark this proxy unknown and route
        // new operations to the other proxies in their URI.
        return refuse(
            MongoError::shutdown_in_progress("The server is in quiesce mode and will shut down"),
            Refused::Draining,
        );
    }
    Action::Hello {
        speculative: phase.is_anonymous(),
    }
}

/// A command for the backend: only a session that holds and has a grant.
fn authorised_relay(command: &Command<'_>, phase: &Phase) -> Action {
    let name = command.name;
    let Some(session) = phase.signed_in() else {
        return refuse(
            MongoError::unauthorized(format!("Command {name} requires authentication")),
            Refused::Unauthenticated,
        );
    };
    if session.expired.is_some() {
        return refuse(
            MongoError::reauthentication_required(format!(
                "Command {name} requires reauthentication since the current authorization session has expired. Please re-auth."
            )),
            Refused::ReauthenticationRequired,
        );
    }
    match session.access {
        Access::Granted { .. } => Action::Relay(Affinity::None),
        Access::Refused => refuse(
            MongoError::unauthorized(format!(
                "not authorized to execute command {name}: no grant of this proxy names user '{}' or its roles; ask the proxy's operator for a [[grant]]",
                session.identity.user
            )),
            Refused::NoGrant,
        ),
    }
}

/// What the `failCommand` fail point's firing does instead of the command:
/// close, or answer its error; `None` lets the command be decided as usual.
pub fn fail_point(then: Then) -> Option<Action> {
    match then {
        Then::Close => Some(Action::Close(CloseReason::FailPoint)),
        Then::Reply(doc) => Some(Action::FailPoint(doc)),
        Then::Proceed => None,
    }
}

/// mongod's test command: absent unless test commands are on, run on
/// `admin`, and (unlike mongod, which needs no sign-in for it) only by a
/// session whose grant has `admin = true`.
fn configure_fail_point(command: &Command<'_>, phase: &Phase, inputs: Inputs) -> Action {
    if !inputs.test_commands {
        return refuse(
            MongoError::command_not_found("no such command: 'configureFailPoint'"),
            Refused::Unsupported,
        );
    }
    if command.db != Some("admin") {
        return refuse(
            MongoError::unauthorized(
                "configureFailPoint may only be run against the admin database.",
            ),
            Refused::Unsupported,
        );
    }
    match authorised_relay(command, phase) {
        Action::Relay(_) if phase.signed_in().is_some_and(|s| s.access.is_admin()) => {
            Action::ConfigureFailPoint
        }
        Action::Relay(_) => refuse(
            MongoError::unauthorized(
                "not authorized on admin to execute command configureFailPoint: the grant that \
                 signed this session in does not have admin = true",
            ),
            Refused::NotAdmin,
        ),
        refused => refused,
    }
}

/// The mechanism a `saslStart` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Oidc,
    /// The test-only set-up user's SCRAM-SHA-256 (`[testing] setup_user`).
    Scram,
}

/// MONGODB-OIDC on `$external`; SCRAM-SHA-256 only when a set-up user is
/// configured and test commands are on (its database is checked by the
/// conversation, where a wrong one fails with 18 as an unknown user does).
/// Anything else is refused as mongod refuses a mechanism it has not enabled.
pub fn sasl_mechanism(
    mechanism: &str,
    db: &str,
    inputs: Inputs,
    setup_user: bool,
) -> Result<SaslMechanism, MongoError> {
    if inputs.test_commands && setup_user && mechanism == crate::auth::scram_server::MECHANISM {
        return Ok(SaslMechanism::Scram);
    }
    crate::auth::oidc::check_mechanism(mechanism, db).map(|()| SaslMechanism::Oidc)
}

/// The rule for a message that did not decode: an error reply where the
/// client awaits one, else the connection is closed.
pub fn decide_malformed(err: &DecodeError) -> Action {
    if let Op::Other(op) = err.op {
        return Action::Close(unsupported(op));
    }
    if err.more_to_come {
        return Action::Close(CloseReason::MalformedMessage);
    }
    let text = err.error.to_string();
    let error = match &err.error {
        WireError::DuplicateField { .. } => MongoError::idl_duplicate_field(text),
        WireError::FieldType { .. } => MongoError::type_mismatch(text),
        WireError::InvalidBson { .. } => MongoError::invalid_bson(text),
        _ => MongoError::protocol_error(text),
    };
    refuse(error, Refused::Malformed)
}

/// The sign-in transition after a verified token: a first sign-in, or a
/// re-authentication, which must be for the same user.
pub fn sign_in(phase: &Phase, verified: Verified) -> Result<SignedIn, MongoError> {
    if let Some(current) = phase.signed_in() {
        let user = &current.identity.user;
        if *user != verified.identity.user {
            return Err(if current.expired.is_some() {
                MongoError::with_code(
                    7070100,
                    "Location7070100",
                    format!("Only same user is permitted to re-auth to an expired session. Expired user is {user}@$external"),
                )
            } else {
                MongoError::with_code(
                    5626701,
                    "Location5626701",
                    format!("Each client connection may only be authenticated once. Previously authenticated as: {user}@$external"),
                )
            });
        }
    }
    Ok(SignedIn {
        identity: verified.identity,
        flow: verified.flow,
        access: verified.access,
        idp_fingerprint: verified.idp_fingerprint,
        key_generation: verified.key_generation,
        runtime_version: verified.runtime_version,
        signed_in_at: verified.at,
        expired: None,
    })
}

/// A verified token and what the current policy says about it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Identity,
    pub flow: Flow,
    pub access: Access,
    pub idp_fingerprint: u64,
    pub key_generation: Option<u64>,
    pub runtime_version: u64,
    pub at: SystemTime,
}

fn refuse(error: MongoError, reason: Refused) -> Action {
    Action::Refuse { error, reason }
}

fn refuse_compressed() -> Action {
    refuse(
        MongoError::not_implemented(
            "OP_COMPRESSED is not supported by mongo-oidc-proxy, which advertises no compressors; remove 'compressors' from the connection string",
        ),
        Refused::Compressed,
    )
}

fn refuse_op_query(name: &str) -> Action {
    refuse(
        MongoError::unsupported_op_query_command(format!(
            "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"
        )),
        Refused::OpQuery,
    )
}

fn unsupported(op: OpCode) -> CloseReason {
    let _ = op;
    CloseReason::UnsupportedOpcode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::oidc::Pending;
    use crate::authz::BackendIdentity;
    use crate::session::phase::Expiry;
    use crate::wire::header::{finish_message, start_message};
    use crate::wire::op_msg::encode;
    use crate::wire::op_query::encode_query;
    use crate::wire::OpMsgFlags;
    use bson::{rawdoc, RawDocumentBuf};
    use std::sync::Arc;

    const SERVING: Inputs = Inputs {
        draining: false,
        test_commands: false,
    };
    const DRAINING: Inputs = Inputs {
        draining: true,
        test_commands: false,
    };
    const TESTING: Inputs = Inputs {
        draining: false,
        test_commands: true,
    };

    fn identity(user: &str) -> Identity {
        Identity {
            idp: 0,
            principal: user.into(),
            user: format!("test/{user}"),
            roles: vec!["test/writers".into()],
            expires_at: 2_000_000_000,
            log_claims: vec![],
        }
    }

    fn granted() -> Access {
        Access::Granted {
            grant: 0,
            backend: Arc::new(BackendIdentity {
                user: "app_rw".into(),
                password: "pw".into(),
            }),
            expires: None,
            admin: false,
        }
    }

    fn verified(user: &str, access: Access) -> Verified {
        Verified {
            identity: identity(user),
            flow: Flow::Machine,
            access,
            idp_fingerprint: 1,
            key_generation: Some(0),
            runtime_version: 1,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn signed_in(access: Access, expired: Option<Expiry>) -> Phase {
        let mut s = sign_in(&Phase::Anonymous, verified("alice", access)).unwrap();
        s.expired = expired;
        Phase::SignedIn(Box::new(s))
    }

    fn phases() -> Vec<(&'static str, Phase)> {
        vec![
            ("anonymous", Phase::Anonymous),
            (
                "authenticating",
                Phase::Authenticating {
                    pending: Pending { idp: 0, hint: None },
                    previous: None,
                },
            ),
            ("signed in", signed_in(granted(), None)),
            ("no grant", signed_in(Access::Refused, None)),
            ("expired", signed_in(granted(), Some(Expiry::TokenExpired))),
        ]
    }

    fn op_msg(doc: RawDocumentBuf) -> Vec<u8> {
        encode(1, 0, 0, &doc)
    }

    fn decide_bytes(bytes: &[u8], phase: &Phase, inputs: Inputs) -> Action {
        match Request::decode(bytes) {
            Ok(req) => decide(&req, phase, inputs),
            Err(e) => decide_malformed(&e),
        }
    }

    fn decide_doc(doc: RawDocumentBuf, phase: &Phase) -> Action {
        decide_bytes(&op_msg(doc), phase, SERVING)
    }

    fn refusal(a: &Action) -> Option<(i32, Refused)> {
        match a {
            Action::Refuse { error, reason } => Some((error.code, *reason)),
            _ => None,
        }
    }

    #[test]
    fn scram_runs_only_for_a_configured_set_up_user_with_test_commands_on() {
        let scram = "SCRAM-SHA-256";
        assert_eq!(
            sasl_mechanism(scram, "admin", TESTING, true),
            Ok(SaslMechanism::Scram)
        );
        assert_eq!(
            sasl_mechanism("MONGODB-OIDC", "$external", TESTING, true),
            Ok(SaslMechanism::Oidc)
        );
        let refused = |mechanism: &str, db: &str, inputs: Inputs, setup: bool| {
            let e = sasl_mechanism(mechanism, db, inputs, setup).unwrap_err();
            (e.code, e.errmsg)
        };
        let not_enabled = |m: &str| {
            (
                334,
                format!("Received authentication for mechanism {m} which is not enabled"),
            )
        };
        // Exactly today's refusal when test commands are off or no set-up user is configured.
        assert_eq!(refused(scram, "admin", SERVING, true), not_enabled(scram));
        assert_eq!(refused(scram, "admin", SERVING, false), not_enabled(scram));
        assert_eq!(refused(scram, "admin", TESTING, false), not_enabled(scram));
        assert_eq!(
            refused("SCRAM-SHA-1", "admin", TESTING, true),
            not_enabled("SCRAM-SHA-1")
        );
        assert_eq!(
            refused("PLAIN", "$external", TESTING, true),
            not_enabled("PLAIN")
        );
    }

    #[test]
    fn commands_answered_locally_in_every_phase() {
        for (what, phase) in phases() {
            let speculative = phase.is_anonymous();
            assert_eq!(
                decide_doc(rawdoc! { "hello": 1, "$db": "admin" }, &phase),
                Action::Hello { speculative },
                "{what}"
            );
            assert_eq!(
                decide_doc(rawdoc! { "isMaster": 1, "$db": "admin" }, &phase),
                Action::Hello { speculative },
                "{what}"
            );
            assert_eq!(
                decide_doc(rawdoc! { "ping": 1 }, &phase),
                Action::Local(Local::Ping),
                "{what}"
            );
            assert_eq!(
                decide_doc(rawdoc! { "buildinfo": 1 }, &phase),
                Action::Local(Local::BuildInfo)
            );
            assert_eq!(
                decide_doc(rawdoc! { "connectionStatus": 1 }, &phase),
                Action::Local(Local::ConnectionStatus)
            );
            assert_eq!(
                decide_doc(rawdoc! { "saslStart": 1 }, &phase),
                Action::SaslStart
            );
            assert_eq!(
                decide_doc(rawdoc! { "saslContinue": 1 }, &phase),
                Action::SaslContinue
            );
            assert_eq!(
                refusal(&decide_doc(rawdoc! { "logout": 1 }, &phase)),
                Some((115, Refused::Unsupported))
            );
            assert_eq!(
                refusal(&decide_doc(
                    rawdoc! { "authenticate": 1, "mechanism": "MONGODB-X509" },
                    &phase
                )),
                Some((334, Refused::Unsupported))
            );
        }
    }

    #[test]
    fn relayed_commands_by_phase() {
        let find = || rawdoc! { "find": "things", "$db": "app" };
        let want = [
            ("anonymous", Some((13, Refused::Unauthenticated))),
            ("authenticating", Some((13, Refused::Unauthenticated))),
            ("signed in", None),
            ("no grant", Some((13, Refused::NoGrant))),
            ("expired", Some((391, Refused::ReauthenticationRequired))),
        ];
        for ((what, phase), (w, expected)) in phases().into_iter().zip(want) {
            assert_eq!(what, w);
            let action = decide_doc(find(), &phase);
            match expected {
                None => assert_eq!(action, Action::Relay(Affinity::None), "{what}"),
                Some(r) => assert_eq!(refusal(&action), Some(r), "{what}"),
            }
        }
        let Action::Refuse { error, .. } = decide_doc(find(), &Phase::Anonymous) else {
            panic!()
        };
        assert_eq!(error.errmsg, "Command find requires authentication");
        let Action::Refuse { error, .. } =
            decide_doc(find(), &signed_in(granted(), Some(Expiry::KeyWithdrawn)))
        else {
            panic!()
        };
        assert_eq!(
            error.errmsg,
            "Command find requires reauthentication since the current authorization session has expired. Please re-auth."
        );
    }

    fn admin_grant() -> Access {
        Access::Granted {
            grant: 2,
            backend: Arc::new(BackendIdentity {
                user: "app_rw".into(),
                password: "pw".into(),
            }),
            expires: None,
            admin: true,
        }
    }

    #[test]
    fn admin_commands_by_phase() {
        let list = || rawdoc! { "oidcListKeys": 1, "$db": "admin" };
        let refresh =
            || rawdoc! { "oidcRefreshKeys": 1, "identityProviders": ["https://a"], "$db": "admin" };
        let not_authorized = "not authorized on admin to execute command { oidcListKeys: 1 }";
        let reauth = "Command oidcListKeys requires reauthentication since the current authorization session has expired. Please re-auth.";
        let mut all = phases();
        all.push(("admin", signed_in(admin_grant(), None)));
        all.push((
            "expired admin",
            signed_in(admin_grant(), Some(Expiry::KeyWithdrawn)),
        ));
        type Want = Option<(i32, Refused, &'static str)>;
        let want: [(&str, Want); 7] = [
            (
                "anonymous",
                Some((
                    13,
                    Refused::Unauthenticated,
                    "Command oidcListKeys requires authentication",
                )),
            ),
            (
                "authenticating",
                Some((
                    13,
                    Refused::Unauthenticated,
                    "Command oidcListKeys requires authentication",
                )),
            ),
            ("signed in", Some((13, Refused::NotAdmin, not_authorized))),
            ("no grant", Some((13, Refused::NotAdmin, not_authorized))),
            (
                "expired",
                Some((391, Refused::ReauthenticationRequired, reauth)),
            ),
            ("admin", None),
            (
                "expired admin",
                Some((391, Refused::ReauthenticationRequired, reauth)),
            ),
        ];
        for ((what, phase), (w, expected)) in all.into_iter().zip(want) {
            assert_eq!(what, w);
            let action = decide_doc(list(), &phase);
            match expected {
                None => {
                    assert_eq!(
                        action,
                        Action::Admin(AdminCommand::ListKeys { issuers: None }),
                        "{what}"
                    );
                    assert_eq!(
                        decide_doc(refresh(), &phase),
                        Action::Admin(AdminCommand::RefreshKeys {
                            issuers: Some(vec!["https://a".into()]),
                            invalidate_on_failure: true
                        })
                    );
                }
                Some((code, reason, message)) => {
                    let Action::Refuse { error, reason: r } = action else {
                        panic!("{what}: {action:?}")
                    };
                    assert_eq!(
                        (error.code, r, error.errmsg.as_str()),
                        (code, reason, message),
                        "{what}"
                    );
                }
            }
        }
        // Never relayed, whatever the phase: the backend has no such command.
        let Action::Refuse { error, .. } = decide_doc(refresh(), &signed_in(granted(), None))
        else {
            panic!()
        };
        assert_eq!(
            error.errmsg,
            "not authorized on admin to execute command { oidcRefreshKeys: 1 }"
        );
    }

    #[test]
    fn admin_commands_run_only_on_admin_and_check_their_arguments_first() {
        let admin = signed_in(admin_grant(), None);
        for (db, phase) in [
            (Some("app"), &admin),
            (None, &admin),
            (Some("app"), &Phase::Anonymous),
        ] {
            let mut doc = rawdoc! { "oidcListKeys": 1 };
            if let Some(db) = db {
                doc.append(bson::raw::cstr!("$db"), db);
            }
            let Action::Refuse { error, reason } = decide_doc(doc, phase) else {
                panic!("{db:?}")
            };
            assert_eq!(
                (error.code, reason, error.errmsg.as_str()),
                (
                    13,
                    Refused::Unsupported,
                    "oidcListKeys may only be run against the admin database."
                )
            );
        }
        let bad = rawdoc! { "oidcRefreshKeys": 1, "invalidateOnFailure": "yes", "$db": "admin" };
        for phase in [&admin, &Phase::Anonymous] {
            assert_eq!(
                refusal(&decide_doc(bad.clone(), phase)),
                Some((14, Refused::Malformed))
            );
        }
        // Names are case-sensitive, as on mongod: anything else is relayed.
        assert_eq!(
            decide_doc(rawdoc! { "oidclistkeys": 1, "$db": "admin" }, &admin),
            Action::Relay(Affinity::None)
        );
    }

    fn admin() -> Access {
        match granted() {
            Access::Granted {
                grant,
                backend,
                expires,
                ..
            } => Access::Granted {
                grant,
                backend,
                expires,
                admin: true,
            },
            other => other,
        }
    }

    #[test]
    fn configure_fail_point_needs_test_commands_admin_db_and_an_admin_grant() {
        let cfp = || rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "admin" };
        let on = |doc: RawDocumentBuf, phase: &Phase| decide_bytes(&op_msg(doc), phase, TESTING);
        let admin_session = signed_in(admin(), None);
        // Off: as on mongod without enableTestCommands, the command does not exist.
        let Action::Refuse { error, reason } = decide_doc(cfp(), &admin_session) else {
            panic!()
        };
        assert_eq!(
            (error.code, error.code_name, error.errmsg.as_str(), reason),
            (
                59,
                "CommandNotFound",
                "no such command: 'configureFailPoint'",
                Refused::Unsupported
            )
        );
        assert_eq!(on(cfp(), &admin_session), Action::ConfigureFailPoint);
        let want = [
            ("anonymous", (13, Refused::Unauthenticated)),
            ("authenticating", (13, Refused::Unauthenticated)),
            ("signed in", (13, Refused::NotAdmin)),
            ("no grant", (13, Refused::NoGrant)),
            ("expired", (391, Refused::ReauthenticationRequired)),
        ];
        for ((what, phase), (w, expected)) in phases().into_iter().zip(want) {
            assert_eq!(what, w);
            assert_eq!(refusal(&on(cfp(), &phase)), Some(expected), "{what}");
        }
        let Action::Refuse { error, .. } = on(cfp(), &signed_in(granted(), None)) else {
            panic!()
        };
        assert_eq!(
            error.errmsg,
            "not authorized on admin to execute command configureFailPoint: the grant that \
             signed this session in does not have admin = true"
        );
        assert_eq!(
            refusal(&on(
                rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "test" },
                &admin_session
            )),
            Some((13, Refused::Unsupported))
        );
        assert_eq!(
            refusal(&on(cfp(), &signed_in(admin(), Some(Expiry::GrantExpired)))),
            Some((391, Refused::ReauthenticationRequired))
        );
    }

    #[test]
    fn get_parameter_is_the_proxys_once_authorised() {
        let gp = || rawdoc! { "getParameter": 1, "authenticationMechanisms": 1, "$db": "admin" };
        let want = [
            ("anonymous", Some((13, Refused::Unauthenticated))),
            ("authenticating", Some((13, Refused::Unauthenticated))),
            ("signed in", None),
            ("no grant", Some((13, Refused::NoGrant))),
            ("expired", Some((391, Refused::ReauthenticationRequired))),
        ];
        for ((what, phase), (w, expected)) in phases().into_iter().zip(want) {
            assert_eq!(what, w);
            let action = decide_doc(gp(), &phase);
            match expected {
                None => assert_eq!(action, Action::GetParameter, "{what}"),
                Some(r) => assert_eq!(refusal(&action), Some(r), "{what}"),
            }
        }
    }

    #[test]
    fn a_fired_fail_point_closes_or_answers_in_place_of_the_command() {
        assert_eq!(
            fail_point(Then::Close),
            Some(Action::Close(CloseReason::FailPoint))
        );
        let doc = rawdoc! { "ok": 0.0, "code": 2 };
        assert_eq!(
            fail_point(Then::Reply(doc.clone())),
            Some(Action::FailPoint(doc))
        );
        assert_eq!(fail_point(Then::Proceed), None);
    }

    #[test]
    fn end_sessions_is_answered_only_before_sign_in() {
        let end = || rawdoc! { "endSessions": [], "$db": "admin" };
        assert_eq!(
            decide_doc(end(), &Phase::Anonymous),
            Action::Local(Local::EndSessions)
        );
        assert_eq!(
            decide_doc(end(), &signed_in(granted(), None)),
            Action::Relay(Affinity::None)
        );
    }

    #[test]
    fn a_reauthentication_in_progress_keeps_the_previous_sign_in() {
        let previous = sign_in(&Phase::Anonymous, verified("alice", granted())).unwrap();
        let phase = Phase::Authenticating {
            pending: Pending {
                idp: 0,
                hint: Some("alice".into()),
            },
            previous: Some(Box::new(previous)),
        };
        assert_eq!(
            decide_doc(rawdoc! { "find": "c" }, &phase),
            Action::Relay(Affinity::None)
        );
        assert_eq!(
            decide_doc(rawdoc! { "hello": 1 }, &phase),
            Action::Hello { speculative: false }
        );
    }

    #[test]
    fn draining_answers_hello_with_91_and_keeps_serving_commands() {
        for (what, phase) in phases() {
            let a = decide_bytes(&op_msg(rawdoc! { "hello": 1 }), &phase, DRAINING);
            assert_eq!(refusal(&a), Some((91, Refused::Draining)), "{what}");
            let legacy = encode_query(1, "admin.$cmd", &rawdoc! { "ismaster": 1 });
            assert_eq!(
                refusal(&decide_bytes(&legacy, &phase, DRAINING)),
                Some((91, Refused::Draining))
            );
        }
        let phase = signed_in(granted(), None);
        let insert = op_msg(rawdoc! { "insert": "c", "documents": [], "$db": "app" });
        assert_eq!(
            decide_bytes(&insert, &phase, DRAINING),
            Action::Relay(Affinity::None)
        );
        assert_eq!(
            decide_bytes(&op_msg(rawdoc! { "ping": 1 }), &phase, DRAINING),
            Action::Local(Local::Ping)
        );
    }

    #[test]
    fn op_query_only_for_the_handshake() {
        let phase = signed_in(granted(), None);
        let hello = encode_query(1, "admin.$cmd", &rawdoc! { "isMaster": 1 });
        assert_eq!(
            decide_bytes(&hello, &Phase::Anonymous, SERVING),
            Action::Hello { speculative: true }
        );
        let find = encode_query(1, "app.$cmd", &rawdoc! { "find": "c" });
        let Action::Refuse { error, reason } = decide_bytes(&find, &phase, SERVING) else {
            panic!()
        };
        assert_eq!((error.code, reason), (352, Refused::OpQuery));
        assert!(error
            .errmsg
            .starts_with("Unsupported OP_QUERY command: find."));
        let legacy_find = encode_query(1, "app.things", &rawdoc! { "x": 1 });
        assert_eq!(
            refusal(&decide_bytes(&legacy_find, &phase, SERVING)),
            Some((352, Refused::OpQuery))
        );
    }

    #[test]
    fn other_opcodes_close_and_compressed_is_refused() {
        let mut insert = Vec::new();
        let at = start_message(&mut insert, 4, 0, OpCode::Other(2002));
        finish_message(&mut insert, at);
        assert_eq!(
            decide_bytes(&insert, &Phase::Anonymous, SERVING),
            Action::Close(CloseReason::UnsupportedOpcode)
        );
        let mut compressed = Vec::new();
        let at = start_message(&mut compressed, 4, 0, OpCode::Compressed);
        compressed.extend_from_slice(&2013i32.to_le_bytes());
        finish_message(&mut compressed, at);
        assert_eq!(
            refusal(&decide_bytes(
                &compressed,
                &signed_in(granted(), None),
                SERVING
            )),
            Some((238, Refused::Compressed))
        );
    }

    #[test]
    fn malformed_messages() {
        let dup = op_msg(rawdoc! { "find": "c", "$db": "app", "$db": "admin" });
        let Action::Refuse { error, reason } =
            decide_bytes(&dup, &signed_in(granted(), None), SERVING)
        else {
            panic!()
        };
        assert_eq!(
            (error.code, error.code_name, reason),
            (40413, "IDLDuplicateField", Refused::Malformed)
        );
        assert_eq!(error.errmsg, "BSON field 'find.$db' is a duplicate field");
        let empty = op_msg(rawdoc! {});
        assert_eq!(
            refusal(&decide_bytes(&empty, &Phase::Anonymous, SERVING)),
            Some((22, Refused::Malformed))
        );
        let fire_and_forget = encode(1, 0, OpMsgFlags::MORE_TO_COME, &rawdoc! {});
        assert_eq!(
            decide_bytes(&fire_and_forget, &Phase::Anonymous, SERVING),
            Action::Close(CloseReason::MalformedMessage)
        );
        let reserved = encode(1, 0, 1 << 4, &rawdoc! { "ping": 1 });
        assert_eq!(
            refusal(&decide_bytes(&reserved, &Phase::Anonymous, SERVING)),
            Some((17, Refused::Malformed))
        );
        let wrong_type = op_msg(rawdoc! { "find": "c", "lsid": 5 });
        assert_eq!(
            refusal(&decide_bytes(&wrong_type, &Phase::Anonymous, SERVING)),
            Some((14, Refused::Malformed))
        );
    }

    #[test]
    fn sign_in_rules() {
        // First sign-in, and re-authentication of the same user.
        let first = sign_in(&Phase::Anonymous, verified("alice", granted())).unwrap();
        assert_eq!(first.identity.user, "test/alice");
        let live = Phase::SignedIn(Box::new(first.clone()));
        assert!(sign_in(&live, verified("alice", granted())).is_ok());
        // Another user on a live session, and on an expired one.
        let e = sign_in(&live, verified("bob", granted())).unwrap_err();
        assert_eq!(e.code, 5626701);
        assert_eq!(
            e.errmsg,
            "Each client connection may only be authenticated once. Previously authenticated as: test/alice@$external"
        );
        let expired = signed_in(granted(), Some(Expiry::TokenExpired));
        let e = sign_in(&expired, verified("bob", granted())).unwrap_err();
        assert_eq!((e.code, e.code_name), (7070100, "Location7070100"));
        assert_eq!(
            e.errmsg,
            "Only same user is permitted to re-auth to an expired session. Expired user is test/alice@$external"
        );
        // Re-authentication clears the expiry and takes the new access.
        let again = sign_in(&expired, verified("alice", Access::Refused)).unwrap();
        assert!(again.expired.is_none());
        assert!(matches!(again.access, Access::Refused));
        let after = Phase::SignedIn(Box::new(again));
        assert_eq!(
            refusal(&decide_doc(rawdoc! { "find": "c" }, &after)),
            Some((13, Refused::NoGrant))
        );
        // A human-flow re-authentication is checked against the previous user too.
        let reauth = Phase::Authenticating {
            pending: Pending { idp: 0, hint: None },
            previous: Some(Box::new(first)),
        };
        assert_eq!(
            sign_in(&reauth, verified("bob", granted()))
                .unwrap_err()
                .code,
            5626701
        );
    }

    #[test]
    fn each_relayed_request_gets_the_affinity_its_server_state_needs() {
        let phase = signed_in(granted(), None);
        let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] } };
        let cases = [
            (rawdoc! { "find": "c", "$db": "app" }, 0, Affinity::None),
            (
                rawdoc! { "getMore": 5_i64, "collection": "c", "$db": "app" },
                0,
                Affinity::Cursor,
            ),
            (
                rawdoc! { "getMore": 5_i64, "collection": "c", "$db": "app" },
                crate::wire::OpMsgFlags::EXHAUST_ALLOWED,
                Affinity::Exhaust,
            ),
            (
                rawdoc! { "killCursors": "c", "cursors": [5_i64], "$db": "app" },
                0,
                Affinity::Cursor,
            ),
            (
                rawdoc! { "insert": "c", "documents": [], "lsid": lsid.clone(), "txnNumber": 1_i64, "autocommit": false, "startTransaction": true, "$db": "app" },
                0,
                Affinity::Transaction,
            ),
            (
                rawdoc! { "commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 1_i64, "autocommit": false, "$db": "admin" },
                0,
                Affinity::Transaction,
            ),
            // A retryable write outside a transaction needs no pin.
            (
                rawdoc! { "insert": "c", "documents": [], "lsid": lsid, "txnNumber": 2_i64, "$db": "app" },
                0,
                Affinity::None,
            ),
        ];
        for (doc, flags, want) in cases {
            let bytes = crate::wire::op_msg::encode(1, 0, flags, &doc);
            assert_eq!(
                decide_bytes(&bytes, &phase, SERVING),
                Action::Relay(want),
                "{doc:?}"
            );
        }
    }
}
