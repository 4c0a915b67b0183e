//! The act step of the test-only SCRAM-SHA-256 set-up user
//! (`[testing] setup_user`): carries [`scram_server`]'s messages in
//! `saslStart`/`saslContinue` and signs the session in as an OIDC sign-in
//! is signed in ([`Session::enter`]), with the grant `setup_grant` names.
//! Every failure is the generic 18; the reason goes to the events only.

use std::sync::Arc;
use std::time::SystemTime;

use bson::{RawDocument, RawDocumentBuf};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::oidc::{self, PayloadEncoding, SaslContinue, SaslPayload};
use crate::auth::scram_server::{self, Conversation, ScramServerError, SetupUser, Step};
use crate::auth::{AuthFailure, Identity};
use crate::errors::MongoError;
use crate::runtime::Runtime;

use super::events::Event;
use super::phase::{Access, Flow};
use super::{decide, Session};

/// 9999-12-31T23:59:59Z, the last time RFC 3339 can write.
const NO_TOKEN_EXPIRY: u64 = 253_402_300_799;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The set-up user, when one is configured and test commands are on.
    pub(super) fn setup_user<'r>(&self, rt: &'r Runtime) -> Option<&'r Arc<SetupUser>> {
        rt.setup_user.as_ref().filter(|_| rt.test_commands)
    }

    /// `saslStart` with SCRAM-SHA-256 (decide chose it): client-first.
    pub(super) async fn scram_start(
        &mut self,
        body: &RawDocument,
        db: &str,
        payload: &SaslPayload<'_>,
        rt: &Runtime,
    ) -> RawDocumentBuf {
        let Some(setup) = self.setup_user(rt).cloned() else {
            return MongoError::generic_authentication_failure().to_document();
        };
        let skip = body
            .get_document("options")
            .ok()
            .and_then(|o| o.get_bool("skipEmptyExchange").ok())
            .unwrap_or(false);
        let step = if db == scram_server::DB {
            setup.credentials.start(&payload.bytes, skip)
        } else {
            Err(ScramServerError::UnknownUser(format!("{db}.*")))
        };
        self.scram_outcome(step, &setup, payload.encoding, rt).await
    }

    /// `saslContinue` of an open SCRAM conversation: client-final, or the
    /// empty last message. The conversation was taken: a message is
    /// answered once, and a replay finds no conversation.
    pub(super) async fn scram_continue(
        &mut self,
        conversation: Conversation,
        cont: &SaslContinue<'_>,
        rt: &Runtime,
    ) -> RawDocumentBuf {
        if let Err(e) = oidc::check_continue(cont, true) {
            return e.to_document();
        }
        let Some(setup) = self.setup_user(rt).cloned() else {
            // Turned off by a reload mid-conversation.
            return MongoError::generic_authentication_failure().to_document();
        };
        let step = setup.credentials.step(conversation, &cont.payload.bytes);
        self.scram_outcome(step, &setup, cont.payload.encoding, rt)
            .await
    }

    async fn scram_outcome(
        &mut self,
        step: Result<Step, ScramServerError>,
        setup: &SetupUser,
        encoding: PayloadEncoding,
        rt: &Runtime,
    ) -> RawDocumentBuf {
        match step {
            Ok(Step::Continue {
                conversation,
                payload,
            }) => {
                self.scram = Some(conversation);
                scram_reply(&payload, false, encoding)
            }
            Ok(Step::Done { payload }) => match self.sign_in_setup_user(setup, rt) {
                Ok(()) => scram_reply(&payload, true, encoding),
                Err(e) => e.to_document(),
            },
            Err(e) => {
                self.emit(&Event::SignInFailed {
                    failure: &AuthFailure::Scram(e),
                    flow: Flow::Scram,
                });
                self.pay_for_failure(rt).await;
                MongoError::generic_authentication_failure().to_document()
            }
        }
    }

    fn sign_in_setup_user(&mut self, setup: &SetupUser, rt: &Runtime) -> Result<(), MongoError> {
        let now = SystemTime::now();
        let user = setup.credentials.user();
        let verified = decide::Verified {
            identity: Identity {
                // No identity provider vouched for it: no index matches.
                idp: usize::MAX,
                principal: user.to_owned(),
                user: user.to_owned(),
                roles: Vec::new(),
                // No token: the sign-in holds while the config keeps it
                // (phase::check_setup_user). The operator's session list
                // formats this as a date, so it must be one.
                expires_at: NO_TOKEN_EXPIRY,
                log_claims: Vec::new(),
            },
            flow: Flow::Scram,
            access: Access::from_decision(rt.grants.by_index(setup.grant, now)),
            idp_fingerprint: setup.fingerprint,
            key_generation: None,
            runtime_version: rt.version,
            at: now,
        };
        self.enter(verified, rt)
    }
}

/// `{conversationId: 1, done, payload, ok: 1}`, the payload in the
/// request's encoding.
fn scram_reply(payload: &[u8], done: bool, encoding: PayloadEncoding) -> RawDocumentBuf {
    let mut doc = bson::rawdoc! { "conversationId": oidc::CONVERSATION_ID, "done": done };
    oidc::append_payload(&mut doc, payload, encoding);
    doc.append(bson::raw::cstr!("ok"), 1.0);
    doc
}
