//! The proxy seen byte for byte: handshake, pre-auth refusals, both
//! MONGODB-OIDC flows, bad tokens, grants, expiry and re-authentication,
//! malformed frames. Real backend (SecantusDB, or $MONGOD_URI), real TLS,
//! tokens signed by the development IdP.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::time::Duration;

use bson::{rawdoc, RawDocumentBuf};
use mongo_oidc_proxy::wire::{self, OpCode};
use mongo_oidc_proxy_devkit::devidp::{DevAlg, DevIdp};
use serde_json::json;
use support::proxy_env::{ProxyEnv, AUDIENCE};
use support::wire_client::{error_of, is_ok, sasl_continue, sasl_start, WireClient};

const AUTH_FAILED: (i32, &str) = (18, "Authentication failed.");

fn err(reply: &RawDocumentBuf) -> (i32, String) {
    error_of(reply)
}

#[tokio::test]
async fn hello_is_answered_like_a_mongos_over_op_msg_and_op_query() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;

    let r = c.command(rawdoc! { "hello": 1, "helloOk": true, "saslSupportedMechs": "$external.alice", "$db": "admin" }).await;
    assert!(is_ok(&r), "{r:?}");
    assert!(r.get_bool("isWritablePrimary").unwrap());
    assert_eq!(r.get_str("msg").unwrap(), "isdbgrid");
    assert!(r.get_bool("helloOk").unwrap());
    let mechs: Vec<&str> = r
        .get_array("saslSupportedMechs")
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().as_str().unwrap())
        .collect();
    assert_eq!(mechs, ["MONGODB-OIDC"]);
    assert!(
        r.get_i32("maxWireVersion").unwrap() >= 9,
        "wire version comes from the backend"
    );
    assert_eq!(r.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
    assert_eq!(r.get_i32("maxBsonObjectSize").unwrap(), 16 * 1024 * 1024);
    for hidden in [
        "hosts",
        "setName",
        "primary",
        "me",
        "topologyVersion",
        "compression",
        "serviceId",
    ] {
        assert!(
            r.get(hidden).unwrap().is_none(),
            "hello must not reveal '{hidden}': {r:?}"
        );
    }

    // The camelCase spelling the Rust driver uses answers `ismaster`.
    let r = c.command(rawdoc! { "isMaster": 1, "$db": "admin" }).await;
    assert!(r.get_bool("ismaster").unwrap());
    assert!(
        r.get("saslSupportedMechs").unwrap().is_none(),
        "only listed when asked"
    );

    // The Node driver and mongosh open with a legacy OP_QUERY isMaster.
    let r = c
        .legacy_command("admin.$cmd", rawdoc! { "ismaster": 1, "helloOk": true })
        .await;
    assert!(r.get_bool("ismaster").unwrap());
    assert_eq!(r.get_str("msg").unwrap(), "isdbgrid");

    // Load-balanced clients need a serviceId.
    let r = c
        .command(rawdoc! { "hello": 1, "loadBalanced": true, "$db": "admin" })
        .await;
    assert!(r.get_object_id("serviceId").is_ok(), "{r:?}");

    // An empty speculativeAuthenticate is refused as mongod does.
    let r = c
        .command(rawdoc! { "hello": 1, "speculativeAuthenticate": {}, "$db": "admin" })
        .await;
    assert_eq!(
        err(&r),
        (
            2,
            "hello.speculativeAuthenticate must be a non-empty Object".into()
        )
    );
    env.stop().await;
}

#[tokio::test]
async fn before_sign_in_only_the_allow_list_is_served() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));
    let r = c.command(rawdoc! { "buildInfo": 1, "$db": "admin" }).await;
    assert!(is_ok(&r) && r.get_str("version").is_ok(), "{r:?}");
    let r = c
        .command(rawdoc! { "connectionStatus": 1, "$db": "admin" })
        .await;
    let info = r.get_document("authInfo").unwrap();
    assert!(info.get_array("authenticatedUsers").unwrap().is_empty());
    assert!(is_ok(
        &c.command(rawdoc! { "endSessions": [], "$db": "admin" })
            .await
    ));

    for (cmd, db) in [
        ("find", "app"),
        ("insert", "app"),
        ("listDatabases", "admin"),
        ("createUser", "admin"),
        ("getMore", "app"),
    ] {
        let mut body = RawDocumentBuf::new();
        let name = <&bson::raw::CStr>::try_from(cmd).unwrap();
        // getMore names its cursor id, a long.
        if cmd == "getMore" {
            body.append(name, 1_i64);
        } else {
            body.append(name, "x");
        }
        body.append(bson::raw::cstr!("$db"), db);
        let r = c.command(body).await;
        assert_eq!(
            err(&r),
            (13, format!("Command {cmd} requires authentication"))
        );
    }

    // endSessions with moreToCome (as node and mongosh send it) gets no reply:
    // the next reply on the wire answers the following ping.
    c.send_msg(
        2,
        &rawdoc! { "endSessions": [], "writeConcern": { "w": 0 }, "$db": "admin" },
    )
    .await;
    let ping = c.send_msg(0, &rawdoc! { "ping": 1, "$db": "admin" }).await;
    let reply = c.recv().await.expect("reply to ping");
    assert_eq!(reply.header.response_to, ping);
    assert_eq!(
        env.running().metrics.relay.to_backend_messages.get(),
        0,
        "nothing reached the backend"
    );
    env.stop().await;
}

#[tokio::test]
async fn machine_flow_signs_in_and_relays_to_the_backend() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    let r = c.sign_in(&env.token("alice", &["writers"], 600)).await;
    assert!(is_ok(&r), "{r:?}");
    assert_eq!(r.get_i32("conversationId").unwrap(), 1);
    assert!(r.get_bool("done").unwrap());
    assert_eq!(r.get_binary("payload").unwrap().bytes, b"");

    let r = c
        .command(rawdoc! { "connectionStatus": 1, "$db": "admin" })
        .await;
    let info = r.get_document("authInfo").unwrap();
    let user = info
        .get_array("authenticatedUsers")
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let user = user.as_document().unwrap();
    assert_eq!(
        (user.get_str("user").unwrap(), user.get_str("db").unwrap()),
        ("test/alice", "$external")
    );
    let role = info
        .get_array("authenticatedUserRoles")
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        role.as_document().unwrap().get_str("role").unwrap(),
        "test/writers"
    );

    let coll = format!("wire_{}", std::process::id());
    let r = c.command(rawdoc! { "insert": coll.as_str(), "documents": [{ "n": 1 }, { "n": 2 }], "$db": "app" }).await;
    assert!(is_ok(&r), "{r:?}");
    assert_eq!(r.get_i32("n").unwrap(), 2);
    let r = c
        .command(rawdoc! { "count": coll.as_str(), "$db": "app" })
        .await;
    assert_eq!(
        r.get_i32("n").ok().map(i64::from).or(r.get_i64("n").ok()),
        Some(2),
        "{r:?}"
    );
    assert!(env.running().metrics.relay.to_backend_messages.get() >= 2);
    env.stop().await;
}

#[tokio::test]
async fn human_flow_returns_the_idp_document_then_accepts_the_jwt() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    let r = c.command(sasl_start(&rawdoc! {})).await;
    assert!(is_ok(&r), "{r:?}");
    assert!(!r.get_bool("done").unwrap());
    assert_eq!(r.get_i32("conversationId").unwrap(), 1);
    let payload = r.get_binary("payload").unwrap().bytes;
    // Exactly {issuer, clientId}: pymongo refuses any extra key.
    let expected = rawdoc! { "issuer": env.idp.issuer(), "clientId": "test-client" };
    assert_eq!(payload, expected.as_bytes());

    let r = c
        .command(sasl_continue(
            &rawdoc! { "jwt": env.token("bob", &["readers"], 600) },
        ))
        .await;
    assert!(is_ok(&r) && r.get_bool("done").unwrap(), "{r:?}");
    // A second saslContinue has no conversation left.
    let r = c.command(sasl_continue(&rawdoc! { "jwt": "x" })).await;
    assert_eq!(err(&r), (17, "No SASL session state found".into()));

    // With a principal-name hint, the token's principal must match it.
    let mut c = env.client().await;
    let r = c.command(sasl_start(&rawdoc! { "n": "carol" })).await;
    assert!(!r.get_bool("done").unwrap());
    let r = c
        .command(sasl_continue(
            &rawdoc! { "jwt": env.token("dave", &["readers"], 600) },
        ))
        .await;
    assert_eq!(err(&r), (AUTH_FAILED.0, AUTH_FAILED.1.into()));
    env.stop().await;
}

fn claims(idp: &DevIdp, sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = idp.claims(sub, Some(&["writers"]), 600);
    if let (Some(base), Some(more)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            base.insert(k.clone(), v.clone());
        }
    }
    c
}

#[tokio::test]
async fn every_bad_token_is_answered_with_a_bare_18() {
    let env = ProxyEnv::start().await;
    let idp = &env.idp;
    let kid = idp.current_kid(DevAlg::Rs256);
    let good = idp.token("alice", &["writers"], 600);
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cases: Vec<(&str, String)> = vec![
        ("expired", idp.token("alice", &["writers"], -120)),
        (
            "wrong audience",
            idp.sign(
                DevAlg::Rs256,
                &claims(idp, "alice", json!({ "aud": "api://someone-else" })),
            ),
        ),
        (
            "wrong issuer",
            idp.sign(
                DevAlg::Rs256,
                &claims(idp, "alice", json!({ "iss": "https://evil.example.com" })),
            ),
        ),
        (
            "not yet valid",
            idp.sign(
                DevAlg::Rs256,
                &claims(idp, "alice", json!({ "nbf": now + 3600 })),
            ),
        ),
        (
            "no exp",
            idp.sign(DevAlg::Rs256, &claims(idp, "alice", json!({ "exp": null }))),
        ),
        (
            "alg none",
            DevIdp::unsigned(
                &json!({ "alg": "none", "typ": "JWT", "kid": kid }),
                &claims(idp, "alice", json!({})),
            ),
        ),
        ("alg none with a signature", {
            let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
            format!(
                "{}c2lnbmF0dXJl",
                DevIdp::unsigned(&header, &claims(idp, "alice", json!({})))
            )
        }),
        ("HS256 with the public key", {
            let header = json!({ "alg": "HS256", "typ": "JWT", "kid": kid });
            let unsigned = DevIdp::unsigned(&header, &claims(idp, "alice", json!({})));
            format!("{unsigned}c2lnbmF0dXJl")
        }),
        (
            "unknown kid",
            idp.sign_with_header(
                &json!({ "alg": "RS256", "typ": "JWT", "kid": "no-such-key" }),
                &claims(idp, "alice", json!({})),
                DevAlg::Rs256,
            ),
        ),
        ("tampered signature", tampered),
        (
            "groups not an array",
            idp.sign(
                DevAlg::Rs256,
                &claims(idp, "alice", json!({ "groups": "writers" })),
            ),
        ),
        ("empty string", String::new()),
        ("garbage", "not a jwt at all".into()),
        ("two parts", "eyJhbGciOiJSUzI1NiJ9.e30".into()),
        ("four parts", "a.b.c.d".into()),
        ("bad base64", "!!!.???.***".into()),
    ];
    // The reason each one is logged and counted under; the client only sees 18.
    let reasons = [
        ("expired", "expired"),
        ("wrong audience", "audience"),
        ("wrong issuer", "issuer"),
        ("not yet valid", "not_yet_valid"),
        ("no exp", "malformed_token"),
        ("alg none", "malformed_token"),
        ("alg none with a signature", "algorithm"),
        ("HS256 with the public key", "algorithm"),
        ("unknown kid", "unknown_key"),
        ("tampered signature", "bad_signature"),
        ("groups not an array", "claim"),
        ("empty string", "malformed_token"),
        ("garbage", "malformed_token"),
        ("two parts", "malformed_token"),
        ("four parts", "malformed_token"),
        ("bad base64", "malformed_token"),
    ];
    assert_eq!(reasons.len(), cases.len());
    let attempts = &env.running().metrics.auth_attempts;
    for (i, ((what, token), (named, reason))) in cases.into_iter().zip(reasons).enumerate() {
        assert_eq!(what, named);
        let before = attempts.failure(reason).get();
        // Each from its own loopback address: failures from one address
        // are answered ever more slowly.
        let from = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, i as u8 + 1));
        let mut c = WireClient::connect_from(from, env.addr(), &env.ca())
            .await
            .expect("connect from a loopback address");
        let r = c.sign_in(&token).await;
        assert_eq!(err(&r), (AUTH_FAILED.0, AUTH_FAILED.1.into()), "{what}");
        assert_eq!(
            attempts.failure(reason).get(),
            before + 1,
            "{what}: logged as {reason}"
        );
        // Still anonymous afterwards.
        let r = c.command(rawdoc! { "find": "x", "$db": "app" }).await;
        assert_eq!(err(&r).0, 13, "{what}");
    }
    // The same connection can still sign in with a good token after a failure.
    let mut c = env.client().await;
    assert_eq!(err(&c.sign_in("garbage").await).0, 18);
    assert!(is_ok(&c.sign_in(&good).await));
    // ES256 tokens from the same IdP are accepted.
    let es = idp.sign(DevAlg::Es256, &claims(idp, "erin", json!({})));
    assert!(is_ok(&env.client().await.sign_in(&es).await));
    let failures = env.running().metrics.render();
    assert!(
        failures.contains(
            "mongo_oidc_proxy_auth_attempts_total{reason=\"expired\",result=\"failure\"} 1"
        ),
        "{failures}"
    );
    env.stop().await;
}

#[tokio::test]
async fn sasl_misuse_gets_mongods_errors() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    let payload = support::wire_client::binary(&rawdoc! {});
    let r = c.command(rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": payload.clone(), "$db": "admin" }).await;
    assert_eq!(
        err(&r),
        (
            334,
            "Received authentication for mechanism SCRAM-SHA-256 which is not enabled".into()
        )
    );
    let r = c.command(rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": payload.clone(), "$db": "admin" }).await;
    assert_eq!(
        err(&r),
        (
            334,
            "Unsupported mechanism 'MONGODB-OIDC' on authentication database 'admin'".into()
        )
    );
    let r = c.command(sasl_continue(&rawdoc! { "jwt": "x" })).await;
    assert_eq!(err(&r), (17, "No SASL session state found".into()));
    let r = c.command(sasl_start(&rawdoc! {})).await;
    assert!(!r.get_bool("done").unwrap());
    let r = c.command(rawdoc! { "saslContinue": 1, "conversationId": 7, "payload": payload, "$db": "$external" }).await;
    assert_eq!(err(&r), (17, "sasl: Mismatched conversation id".into()));
    let r = c
        .command(rawdoc! { "authenticate": 1, "mechanism": "MONGODB-X509", "$db": "$external" })
        .await;
    assert_eq!(err(&r).0, 334);
    env.stop().await;
}

#[tokio::test]
async fn no_matching_grant_signs_in_but_refuses_every_command_with_13() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("mallory", &["interns"], 600)).await
    ));
    let r = c.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert_eq!(
        err(&r),
        (13, "not authorized to execute command find: no grant of this proxy names user 'test/mallory' or its roles; ask the proxy's operator for a [[grant]]".into())
    );
    assert!(is_ok(
        &c.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));
    assert_eq!(
        env.running().metrics.relay.to_backend_messages.get(),
        0,
        "nothing reached the backend"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_reader_is_refused_a_write_by_the_backend() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("rita", &["readers"], 600)).await
    ));
    let r = c.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert!(is_ok(&r), "{r:?}");
    let r = c
        .command(rawdoc! { "insert": "things", "documents": [{ "x": 1 }], "$db": "app" })
        .await;
    assert_eq!(err(&r).0, 13, "{r:?}");
    env.stop().await;
}

#[tokio::test]
async fn an_expired_token_gets_391_until_the_same_user_signs_in_again() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 2)).await
    ));
    assert!(is_ok(
        &c.command(rawdoc! { "find": "things", "$db": "app" }).await
    ));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = c.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert_eq!(
        err(&r),
        (391, "Command find requires reauthentication since the current authorization session has expired. Please re-auth.".into())
    );
    assert!(is_ok(
        &c.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));
    assert!(is_ok(
        &c.command(rawdoc! { "hello": 1, "$db": "admin" }).await
    ));
    // Another user may not take over the expired session.
    let r = c.sign_in(&env.token("bob", &["writers"], 600)).await;
    assert_eq!(err(&r), (7070100, "Only same user is permitted to re-auth to an expired session. Expired user is test/alice@$external".into()));
    // The same user with a fresh token continues on the same connection.
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    assert!(is_ok(
        &c.command(rawdoc! { "find": "things", "$db": "app" }).await
    ));
    // While valid, a different user is refused too.
    let r = c.sign_in(&env.token("bob", &["writers"], 600)).await;
    assert_eq!(err(&r).0, 5626701);
    assert!(env
        .running()
        .metrics
        .render()
        .contains("mongo_oidc_proxy_reauthentications_total 1"));
    env.stop().await;
}

#[tokio::test]
async fn speculative_authentication_in_hello() {
    let env = ProxyEnv::start().await;
    let token = env.token("alice", &["writers"], 600);
    let spec = rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": support::wire_client::binary(&rawdoc! { "jwt": token }), "db": "$external" };
    let mut c = env.client().await;
    let r = c
        .command(rawdoc! { "hello": 1, "speculativeAuthenticate": spec.clone(), "$db": "admin" })
        .await;
    let s = r
        .get_document("speculativeAuthenticate")
        .expect("speculative reply");
    assert_eq!(
        (
            s.get_i32("conversationId").unwrap(),
            s.get_bool("done").unwrap()
        ),
        (1, true)
    );
    assert!(
        is_ok(&c.command(rawdoc! { "find": "things", "$db": "app" }).await),
        "signed in without saslStart"
    );

    // A bad speculative token is swallowed: no field, still anonymous.
    let bad = rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": support::wire_client::binary(&rawdoc! { "jwt": "garbage" }), "db": "$external" };
    let mut c = env.client().await;
    let r = c
        .command(rawdoc! { "hello": 1, "speculativeAuthenticate": bad, "$db": "admin" })
        .await;
    assert!(
        is_ok(&r) && r.get("speculativeAuthenticate").unwrap().is_none(),
        "{r:?}"
    );
    assert_eq!(
        err(&c.command(rawdoc! { "find": "things", "$db": "app" }).await).0,
        13
    );
    // Over OP_QUERY too (the Node driver's handshake).
    let mut c = env.client().await;
    let r = c
        .legacy_command(
            "admin.$cmd",
            rawdoc! { "ismaster": 1, "speculativeAuthenticate": spec },
        )
        .await;
    assert!(r.get_document("speculativeAuthenticate").is_ok(), "{r:?}");
    env.stop().await;
}

fn op_msg_with(flags: u32, sections: &[u8], checksum: Option<u32>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&77i32.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&2013i32.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(sections);
    if let Some(c) = checksum {
        out.extend_from_slice(&c.to_le_bytes());
    }
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

async fn error_reply(c: &mut WireClient) -> (OpCode, i32, String) {
    let f = c
        .recv()
        .await
        .expect("an error reply, not a closed connection");
    let doc = match f.header.op_code {
        OpCode::Reply => wire::op_query::parse_reply(&f.bytes).unwrap().to_owned(),
        _ => wire::OpMsg::parse(&f.bytes).unwrap().body.to_owned(),
    };
    let (code, msg) = err(&doc);
    (f.header.op_code, code, msg)
}

#[tokio::test]
async fn malformed_messages_get_errors_or_a_closed_connection() {
    let env = ProxyEnv::start().await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    let mut body = vec![0u8];
    body.extend_from_slice(ping.as_bytes());

    let mut c = env.client().await;
    c.send_raw(&op_msg_with(1, &body, Some(0xdead_beef))).await;
    let (op, code, msg) = error_reply(&mut c).await;
    assert_eq!((op, code), (OpCode::Msg, 17));
    assert!(
        msg.starts_with("OP_MSG checksum mismatch: message says 0xdeadbeef"),
        "{msg}"
    );
    c.send_raw(&op_msg_with(0, &[9, 1, 2], None)).await;
    assert_eq!(
        error_reply(&mut c).await.2,
        "OP_MSG section kind 9 is unknown"
    );
    c.send_raw(&op_msg_with(1 << 3, &body, None)).await;
    assert_eq!(
        error_reply(&mut c).await.2,
        "OP_MSG flag bits 0x8 are reserved and must be zero"
    );
    c.send_raw(&op_msg_with(0, &[0, 6, 0, 0, 0, 16, 0], None))
        .await;
    assert_eq!(error_reply(&mut c).await.1, 22, "invalid BSON");
    // A well-formed message still works on the same connection.
    assert!(is_ok(&c.command(ping.clone()).await));

    // OP_COMPRESSED is refused with a hint; the connection stays.
    let mut compressed = Vec::new();
    compressed.extend_from_slice(&0i32.to_le_bytes());
    compressed.extend_from_slice(&5i32.to_le_bytes());
    compressed.extend_from_slice(&0i32.to_le_bytes());
    compressed.extend_from_slice(&2012i32.to_le_bytes());
    compressed.extend_from_slice(&2013i32.to_le_bytes());
    compressed.extend_from_slice(&10i32.to_le_bytes());
    compressed.push(2);
    compressed.extend_from_slice(b"zzzz");
    let len = compressed.len() as i32;
    compressed[..4].copy_from_slice(&len.to_le_bytes());
    c.send_raw(&compressed).await;
    let (_, code, msg) = error_reply(&mut c).await;
    assert_eq!(code, 238);
    assert!(
        msg.starts_with("OP_COMPRESSED is not supported by mongo-oidc-proxy"),
        "{msg}"
    );

    // OP_QUERY for anything but the handshake: mongod 5.1+'s error, as OP_REPLY.
    let r = c.legacy_command("app.$cmd", rawdoc! { "find": "x" }).await;
    assert_eq!(err(&r).0, 352);
    let r = c
        .legacy_command("app.things", rawdoc! { "ismaster": 1 })
        .await;
    assert_eq!(err(&r).0, 352);

    // A declared length above the limit closes the connection before any allocation.
    let mut c = env.client().await;
    let mut huge = op_msg_with(0, &body, None);
    huge[..4].copy_from_slice(&48_000_001i32.to_le_bytes());
    c.send_raw(&huge).await;
    assert!(
        c.recv().await.is_none(),
        "oversized message must close the connection"
    );
    // A legacy OP_INSERT closes the connection.
    let mut c = env.client().await;
    let mut insert = op_msg_with(0, &body, None);
    insert[12..16].copy_from_slice(&2002i32.to_le_bytes());
    c.send_raw(&insert).await;
    assert!(c.recv().await.is_none());
    let metrics = env.running().metrics.render();
    assert!(
        metrics.contains("mongo_oidc_proxy_wire_errors_total{kind=\"length_too_large\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mongo_oidc_proxy_wire_errors_total{kind=\"checksum_mismatch\"} 1"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test]
async fn exhaust_getmore_streams_every_batch() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let coll = format!("exhaust_{}", std::process::id());
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..10 {
        docs.push(rawdoc! { "i": i });
    }
    let insert = rawdoc! { "insert": coll.as_str(), "documents": docs, "$db": "app" };
    assert!(is_ok(&c.command(insert).await));
    let r = c
        .command(rawdoc! { "find": coll.as_str(), "batchSize": 2, "$db": "app" })
        .await;
    let cursor_id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(cursor_id, 0);
    c.send_msg(1 << 16, &rawdoc! { "getMore": cursor_id, "collection": coll.as_str(), "batchSize": 2, "$db": "app" }).await;
    let mut seen = 2;
    loop {
        let f = c.recv().await.expect("exhaust reply");
        let msg = wire::OpMsg::parse(&f.bytes).unwrap();
        let batch = msg
            .body
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap();
        seen += batch.into_iter().count();
        if !msg.flags.more_to_come() {
            assert_eq!(
                msg.body
                    .get_document("cursor")
                    .unwrap()
                    .get_i64("id")
                    .unwrap(),
                0
            );
            break;
        }
    }
    assert_eq!(seen, 10);
    assert!(
        is_ok(&c.command(rawdoc! { "ping": 1, "$db": "admin" }).await),
        "connection usable after exhaust"
    );
    let _ = AUDIENCE;
    env.stop().await;
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_ends_sessions_signed_with_it() {
    let env = ProxyEnv::start().await;
    let old_kid = env.idp.current_kid(DevAlg::Rs256);
    let old_token = env.token("alice", &["writers"], 600);
    let mut a = env.client().await;
    assert!(is_ok(&a.sign_in(&old_token).await));
    assert!(is_ok(
        &a.command(rawdoc! { "find": "things", "$db": "app" }).await
    ));

    // The IdP rotates and withdraws the old key; the first token with the new
    // kid makes the proxy refresh its key set.
    env.idp.rotate(DevAlg::Rs256);
    assert!(env.idp.remove_key(&old_kid));
    let mut b = env.client().await;
    assert!(is_ok(
        &b.sign_in(&env.token("bob", &["writers"], 600)).await
    ));

    let r = a.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert_eq!(err(&r).0, 391, "{r:?}");
    assert_eq!(
        err(&a.sign_in(&old_token).await),
        (AUTH_FAILED.0, AUTH_FAILED.1.into()),
        "the withdrawn key signs nothing now"
    );
    assert!(is_ok(
        &a.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    assert!(is_ok(
        &a.command(rawdoc! { "find": "things", "$db": "app" }).await
    ));
    env.stop().await;
}

#[tokio::test]
async fn silence_before_sign_in_closes_the_connection_but_not_during_a_human_flow() {
    // The test config allows 5 s of silence before sign-in.
    let env = ProxyEnv::start().await;
    let mut idle = env.client().await;
    let mut human = env.client().await;
    let r = human.command(sasl_start(&rawdoc! {})).await;
    assert!(!r.get_bool("done").unwrap());
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert!(
        idle.recv().await.is_none(),
        "an anonymous connection silent for longer than auth_timeout_secs is closed"
    );
    // The person at the IdP may take longer: step 2 still works.
    let r = human
        .command(sasl_continue(
            &rawdoc! { "jwt": env.token("hana", &["writers"], 600) },
        ))
        .await;
    assert!(is_ok(&r) && r.get_bool("done").unwrap(), "{r:?}");
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_connections_closed_total{reason=\"idle_before_sign_in\"} 1"),
        "{m}"
    );
    env.stop().await;
}

#[tokio::test]
async fn when_the_backend_goes_away_commands_get_host_unreachable_and_the_client_stays() {
    use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
    use support::proxy_env::{READER, WRITER};
    let backend = support::start_secantus(vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(READER.0, READER.1, &[("read", "app")]),
    ])
    .await;
    let env = ProxyEnv::start_full(&backend.uri, "", "").await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    assert!(is_ok(
        &c.command(rawdoc! { "find": "things", "$db": "app" }).await
    ));
    backend.shutdown().await;
    // The pooled connection the find used is dead: the command fails as a
    // network error the driver may retry, and the client connection stays.
    let r = c.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert_eq!(err(&r).0, 6, "{r:?}");
    assert!(
        !format!("{r:?}").contains("127.0.0.1"),
        "the backend's address is not shown: {r:?}"
    );
    assert!(is_ok(
        &c.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));
    let m = env.running().metrics.render();
    assert!(
        !m.contains("mongo_oidc_proxy_connections_closed_total{reason=\"backend_closed\"} 1"),
        "{m}"
    );

    // A new session cannot reach the backend: a retryable write gets
    // HostUnreachable labelled RetryableWriteError, and nothing of the
    // backend (address, user, auth source) is shown.
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } };
    let r = c
        .command(rawdoc! { "insert": "things", "documents": [{ "x": 1 }], "lsid": lsid, "txnNumber": 1_i64, "$db": "app" })
        .await;
    assert_eq!(
        err(&r),
        (6, "mongo-oidc-proxy cannot reach its backend".to_string())
    );
    let labels: Vec<&str> = r
        .get_array("errorLabels")
        .expect("errorLabels")
        .into_iter()
        .filter_map(|v| v.ok().and_then(|v| v.as_str()))
        .collect();
    assert_eq!(labels, ["RetryableWriteError"]);
    let r = c.command(rawdoc! { "find": "things", "$db": "app" }).await;
    assert_eq!(err(&r).0, 6);
    assert!(
        r.get_array("errorLabels").is_err(),
        "a read is not labelled: {r:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn cursors_and_sessions_a_client_does_not_own_are_refused_with_exact_errors() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let r = c
        .command(rawdoc! { "getMore": 4242_i64, "collection": "things", "$db": "app" })
        .await;
    assert_eq!(err(&r), (43, "cursor id 4242 not found".to_string()));
    let r = c
        .command(rawdoc! { "killCursors": "things", "cursors": [4242_i64], "$db": "app" })
        .await;
    assert_eq!(err(&r), (43, "cursor id 4242 not found".to_string()));
    let r = c
        .command(rawdoc! { "find": "things", "lsid": { "id": 1 }, "$db": "app" })
        .await;
    assert_eq!(
        err(&r),
        (
            2,
            "lsid must be a document whose id is a 16-byte UUID".to_string()
        )
    );
    let r = c
        .command(rawdoc! { "killAllSessions": [], "$db": "admin" })
        .await;
    assert_eq!(
        err(&r),
        (
            13,
            "killAllSessions is not allowed through mongo-oidc-proxy: it would end other users' \
             sessions; end your own with endSessions"
                .to_string()
        )
    );
    // Another user's session.
    let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0x5a; 16] } };
    assert!(is_ok(
        &c.command(rawdoc! { "find": "things", "lsid": lsid.clone(), "$db": "app" })
            .await
    ));
    let mut bob = env.client().await;
    assert!(is_ok(
        &bob.sign_in(&env.token("bob", &["writers"], 600)).await
    ));
    let r = bob
        .command(rawdoc! { "find": "things", "lsid": lsid, "$db": "app" })
        .await;
    assert_eq!(
        err(&r),
        (
            13,
            "Cannot use this logical session: it belongs to another user".to_string()
        )
    );
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_commands_total{disposition=\"refused_not_owner\"} 5"),
        "{m}"
    );
    env.stop().await;
}
