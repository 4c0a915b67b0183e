//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) for the one
//! test-only set-up user of `[testing] setup_user`.
//!
//! Drivers' own test harnesses (pymongo's `client_context`) sign in with
//! SCRAM wherever the server has authentication on, and use that client to
//! set fail points and write test data; the specification's OIDC test
//! servers accept SCRAM for that user besides MONGODB-OIDC. The proxy can
//! be such a server only with test commands on (config validation refuses
//! the user otherwise).
//!
//! Pure functions over the conversation's messages: the session carries them
//! in `saslStart`/`saslContinue`, keeps the [`Conversation`] between the two
//! and turns every [`ScramServerError`] into the generic 18, as mongod does
//! ("All the client needs to know is that authentication has failed").
//! No error text quotes the client's proof.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::backend::scram::{hmac, saslprep_ascii};
use crate::config::{ConfigError, GrantConfig, TestingConfig};

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// The set-up user's database: drivers' harnesses sign in with authSource admin.
pub const DB: &str = "admin";
/// mongod's default `scramSHA256IterationCount`.
pub const ITERATIONS: u32 = 15_000;
const SALT_BYTES: usize = 28;
/// The server's part of the nonce, as many random bytes as drivers use.
const NONCE_BYTES: usize = 24;
/// Client messages are a user name, a nonce and a proof: a few hundred bytes.
pub const MAX_MESSAGE: usize = 4096;

/// Why a SCRAM step failed: logged, while the client gets 18.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramServerError {
    #[error("SCRAM message is not valid UTF-8")]
    NotUtf8,
    #[error("SCRAM message is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("channel binding is not supported: the gs2 header must be 'n,,'")]
    ChannelBinding,
    #[error("an authorization identity (authzid) in the gs2 header is not supported")]
    Authzid,
    #[error("client-first message is not valid: {0}")]
    BadClientFirst(&'static str),
    #[error("user name is not ASCII: SASLprep for other characters is not implemented")]
    NonAsciiUser,
    #[error("no SCRAM user '{0}' on database {DB}")]
    UnknownUser(String),
    #[error("client-final message is not valid: {0}")]
    BadClientFinal(&'static str),
    #[error("client-final channel binding is not 'biws' (the gs2 header 'n,,')")]
    ChannelBindingMismatch,
    #[error("client-final nonce is not this conversation's nonce")]
    NonceMismatch,
    #[error("client proof does not match the set-up user's credentials")]
    BadProof,
    #[error("the last message of the conversation must be empty")]
    ExpectedEmpty,
}

/// What the server keeps of the set-up user's password (RFC 5802's
/// StoredKey and ServerKey), derived once at start-up.
pub struct Credentials {
    user: String,
    salt_b64: String,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for Credentials {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Where a conversation is between two client messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// server-first sent: awaiting client-final.
    Started {
        /// `client-first-bare "," server-first`, the start of AuthMessage.
        auth_prefix: String,
        nonce: String,
        /// `saslStart`'s `options.skipEmptyExchange`: done at server-final.
        skip_empty_exchange: bool,
    },
    /// server-final sent with `done: false`: awaiting the empty message.
    Verified,
}

/// The outcome of one client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Reply with `payload`, `done: false`; the conversation goes on.
    Continue {
        conversation: Conversation,
        payload: Vec<u8>,
    },
    /// Reply with `payload`, `done: true`: the client is signed in.
    Done { payload: Vec<u8> },
}

impl Credentials {
    /// Derives the keys with a fresh random salt and mongod's iteration count.
    pub fn derive(user: &str, password: &str) -> Result<Credentials, &'static str> {
        let mut salt = [0u8; SALT_BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        Credentials::with_salt(user, password, &salt, ITERATIONS)
    }

    /// Derives the keys with a given salt (for tests with known vectors).
    pub fn with_salt(
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Credentials, &'static str> {
        let password = saslprep_ascii(password).map_err(|_| {
            "the password must be non-empty printable ASCII: SASLprep for other characters is \
             not implemented"
        })?;
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Ok(Credentials {
            user: user.to_owned(),
            salt_b64: B64.encode(salt),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Answers client-first with server-first, with a fresh server nonce.
    pub fn start(
        &self,
        client_first: &[u8],
        skip_empty_exchange: bool,
    ) -> Result<Step, ScramServerError> {
        let mut raw = [0u8; NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        self.start_with_nonce(client_first, &B64.encode(raw), skip_empty_exchange)
    }

    /// [`Credentials::start`] with a given server nonce (for tests).
    pub fn start_with_nonce(
        &self,
        client_first: &[u8],
        server_nonce: &str,
        skip_empty_exchange: bool,
    ) -> Result<Step, ScramServerError> {
        let first = parse_client_first(text(client_first)?)?;
        if first.user != self.user {
            return Err(ScramServerError::UnknownUser(first.user));
        }
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!("r={nonce},s={},i={}", self.salt_b64, self.iterations);
        Ok(Step::Continue {
            payload: server_first.clone().into_bytes(),
            conversation: Conversation::Started {
                auth_prefix: format!("{},{server_first}", first.bare),
                nonce,
                skip_empty_exchange,
            },
        })
    }

    /// Takes the next client message. The conversation is consumed: a
    /// message can be answered once.
    pub fn step(
        &self,
        conversation: Conversation,
        message: &[u8],
    ) -> Result<Step, ScramServerError> {
        match conversation {
            Conversation::Started {
                auth_prefix,
                nonce,
                skip_empty_exchange,
            } => {
                let server_final = self.verify_final(&auth_prefix, &nonce, text(message)?)?;
                Ok(if skip_empty_exchange {
                    Step::Done {
                        payload: server_final,
                    }
                } else {
                    Step::Continue {
                        conversation: Conversation::Verified,
                        payload: server_final,
                    }
                })
            }
            Conversation::Verified if message.is_empty() => Ok(Step::Done {
                payload: Vec::new(),
            }),
            Conversation::Verified => Err(ScramServerError::ExpectedEmpty),
        }
    }

    /// Checks client-final's proof in constant time; returns server-final.
    fn verify_final(
        &self,
        auth_prefix: &str,
        nonce: &str,
        message: &str,
    ) -> Result<Vec<u8>, ScramServerError> {
        let bad = ScramServerError::BadClientFinal;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(bad("it does not end with the proof 'p='"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(bad("its first attribute is not the channel binding 'c='"))?;
        let echoed = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(bad("its second attribute is not the nonce 'r='"))?;
        if binding != "biws" {
            return Err(ScramServerError::ChannelBindingMismatch);
        }
        if echoed != nonce {
            return Err(ScramServerError::NonceMismatch);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(bad("the proof is not 32 bytes in base64"))?;
        let auth_message = format!("{auth_prefix},{without_proof}");
        let signature = hmac(&self.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.stored_key)) {
            return Err(ScramServerError::BadProof);
        }
        let server_signature = hmac(&self.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

fn text(bytes: &[u8]) -> Result<&str, ScramServerError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ScramServerError::TooLong);
    }
    std::str::from_utf8(bytes).map_err(|_| ScramServerError::NotUtf8)
}

struct ClientFirst<'a> {
    user: String,
    nonce: &'a str,
    bare: &'a str,
}

fn parse_client_first(message: &str) -> Result<ClientFirst<'_>, ScramServerError> {
    let bad = ScramServerError::BadClientFirst;
    let Some(bare) = message.strip_prefix("n,,") else {
        return Err(if message.starts_with("y,") || message.starts_with("p=") {
            ScramServerError::ChannelBinding
        } else if message.starts_with("n,a=") {
            ScramServerError::Authzid
        } else {
            bad("it does not start with the gs2 header 'n,,'")
        });
    };
    if bare.starts_with("m=") {
        return Err(bad("mandatory extensions ('m=') are not supported"));
    }
    let mut parts = bare.split(',');
    let user = parts
        .next()
        .and_then(|p| p.strip_prefix("n="))
        .ok_or(bad("its first attribute is not the user name 'n='"))?;
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(bad("its second attribute is not the nonce 'r='"))?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(bad("the nonce is empty or not printable ASCII"));
    }
    Ok(ClientFirst {
        user: unescape_user(user)?,
        nonce,
        bare,
    })
}

/// RFC 5802 `saslname`: `=2C` is ',' and `=3D` is '='; no other '='.
fn unescape_user(name: &str) -> Result<String, ScramServerError> {
    if name.is_empty() {
        return Err(ScramServerError::BadClientFirst("the user name is empty"));
    }
    if !name.is_ascii() {
        return Err(ScramServerError::NonAsciiUser);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        let (before, escape) = rest.split_at(at);
        out.push_str(before);
        let (decoded, tail) = match escape.get(..3) {
            Some("=2C") => (',', escape.get(3..)),
            Some("=3D") => ('=', escape.get(3..)),
            _ => {
                return Err(ScramServerError::BadClientFirst(
                    "the user name has an '=' that is not '=2C' or '=3D'",
                ))
            }
        };
        out.push(decoded);
        rest = tail.unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// The set-up user as the runtime holds it: credentials and the grant its
/// sessions get.
#[derive(Debug)]
pub struct SetupUser {
    pub credentials: Credentials,
    /// Index of the `[[grant]]` named by `testing.setup_grant`.
    pub grant: usize,
    /// Changes when the user, password or grant does: a reload that changes
    /// it ends the set-up user's open sessions.
    pub fingerprint: u64,
}

impl SetupUser {
    /// Reads the password and derives the credentials; `previous` (the
    /// running runtime's) is kept when nothing changed. Config validation
    /// already checked the fields' shape and the grant's existence.
    pub fn from_config(
        testing: &TestingConfig,
        grants: &[GrantConfig],
        previous: Option<&std::sync::Arc<SetupUser>>,
    ) -> Result<Option<std::sync::Arc<SetupUser>>, ConfigError> {
        let Some(user) = testing.setup_user.as_deref() else {
            return Ok(None);
        };
        let password = read_password(testing)?;
        let field = if testing.setup_password_env.is_some() {
            "testing.setup_password_env"
        } else {
            "testing.setup_password_file"
        };
        let name = testing.setup_grant.as_deref().unwrap_or("");
        let Some((grant, config)) = grants
            .iter()
            .enumerate()
            .find(|(_, g)| g.name.as_deref() == Some(name))
        else {
            return Err(ConfigError::new(
                "testing.setup_grant",
                format!("no [[grant]] has name = \"{name}\""),
            ));
        };
        let fingerprint = fingerprint(user, &password, grant, config);
        if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Ok(Some(p.clone()));
        }
        let credentials =
            Credentials::derive(user, &password).map_err(|e| ConfigError::new(field, e))?;
        Ok(Some(std::sync::Arc::new(SetupUser {
            credentials,
            grant,
            fingerprint,
        })))
    }
}

fn read_password(testing: &TestingConfig) -> Result<String, ConfigError> {
    match (&testing.setup_password_env, &testing.setup_password_file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            ConfigError::new(
                "testing.setup_password_env",
                format!("environment variable {var} is not set; export it with the set-up user's password"),
            )
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| {
                ConfigError::new(
                    "testing.setup_password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (None, None) => Err(ConfigError::new(
            "testing.setup_password_env",
            "the set-up user needs a password: name an environment variable (setup_password_env) or a file (setup_password_file)",
        )),
    }
}

fn fingerprint(user: &str, password: &str, grant: usize, config: &GrantConfig) -> u64 {
    let mut h = Sha256::new();
    let grant = grant.to_le_bytes();
    let admin = [u8::from(config.admin)];
    for part in [
        user.as_bytes(),
        password.as_bytes(),
        &grant,
        config.backend_user.as_bytes(),
        &admin,
    ] {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::scram::{SaltedPasswordCache, ScramSha256};

    // RFC 7677 section 3's example conversation.
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc() -> Credentials {
        Credentials::with_salt("user", "pencil", &B64.decode(SALT).unwrap(), 4096).unwrap()
    }

    fn started(creds: &Credentials, skip: bool) -> Conversation {
        match creds
            .start_with_nonce(CLIENT_FIRST.as_bytes(), SERVER_NONCE, skip)
            .unwrap()
        {
            Step::Continue {
                conversation,
                payload,
            } => {
                assert_eq!(payload, SERVER_FIRST.as_bytes());
                conversation
            }
            done => panic!("{done:?}"),
        }
    }

    #[test]
    fn the_rfc_7677_example_conversation() {
        let creds = rfc();
        let conversation = started(&creds, true);
        assert_eq!(
            creds.step(conversation, CLIENT_FINAL.as_bytes()).unwrap(),
            Step::Done {
                payload: SERVER_FINAL.as_bytes().to_vec()
            }
        );
    }

    #[test]
    fn without_skip_empty_exchange_an_empty_message_ends_it() {
        let creds = rfc();
        let conversation = started(&creds, false);
        let Step::Continue {
            conversation,
            payload,
        } = creds.step(conversation, CLIENT_FINAL.as_bytes()).unwrap()
        else {
            panic!("not done before the empty exchange")
        };
        assert_eq!(payload, SERVER_FINAL.as_bytes());
        assert_eq!(
            creds.step(conversation.clone(), b"x"),
            Err(ScramServerError::ExpectedEmpty)
        );
        assert_eq!(
            creds.step(conversation, b""),
            Ok(Step::Done { payload: vec![] })
        );
    }

    #[test]
    fn the_proxys_own_scram_client_signs_in() {
        let creds = Credentials::derive("setup", "s3cret-pw").unwrap();
        let mut client = ScramSha256::new("setup", "s3cret-pw").unwrap();
        let Step::Continue {
            conversation,
            payload,
        } = creds.start(&client.client_first(), true).unwrap()
        else {
            panic!()
        };
        let cache = SaltedPasswordCache::new();
        let last = client.client_final(&payload, &cache).unwrap();
        let Step::Done { payload } = creds.step(conversation, &last).unwrap() else {
            panic!()
        };
        client.verify_server_final(&payload).unwrap();
        assert!(client.is_done());
        // Two starts never share a server nonce.
        let nonce = |step: Step| match step {
            Step::Continue {
                conversation: Conversation::Started { nonce, .. },
                ..
            } => nonce,
            other => panic!("{other:?}"),
        };
        let first = client.client_first();
        assert_ne!(
            nonce(creds.start(&first, true).unwrap()),
            nonce(creds.start(&first, true).unwrap())
        );
    }

    #[test]
    fn a_wrong_password_is_a_bad_proof_that_never_quotes_the_proof() {
        let creds = Credentials::derive("setup", "right-password").unwrap();
        let mut client = ScramSha256::new("setup", "wrong-password").unwrap();
        let Step::Continue {
            conversation,
            payload,
        } = creds.start(&client.client_first(), true).unwrap()
        else {
            panic!()
        };
        let last = client
            .client_final(&payload, &SaltedPasswordCache::new())
            .unwrap();
        let err = creds.step(conversation, &last).unwrap_err();
        assert_eq!(err, ScramServerError::BadProof);
        let proof = std::str::from_utf8(&last)
            .unwrap()
            .rsplit_once(",p=")
            .unwrap()
            .1;
        assert!(!err.to_string().contains(proof));
        assert!(!format!("{err:?}").contains(proof));
        assert_eq!(
            err.to_string(),
            "client proof does not match the set-up user's credentials"
        );
    }

    #[test]
    fn a_wrong_nonce_or_a_replayed_client_final_is_refused() {
        let creds = rfc();
        let wrong = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(
            creds.step(started(&creds, true), wrong.as_bytes()),
            Err(ScramServerError::NonceMismatch)
        );
        // The same client-final in a new conversation, whose server nonce
        // is fresh: it names the old conversation's nonce.
        let fresh = match creds.start(CLIENT_FIRST.as_bytes(), true).unwrap() {
            Step::Continue { conversation, .. } => conversation,
            done => panic!("{done:?}"),
        };
        assert_eq!(
            creds.step(fresh, CLIENT_FINAL.as_bytes()),
            Err(ScramServerError::NonceMismatch)
        );
    }

    #[test]
    fn malformed_client_first_messages() {
        let creds = rfc();
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\xff\xfe", "SCRAM message is not valid UTF-8"),
            (long.as_bytes(), "SCRAM message is longer than 4096 bytes"),
            (b"", "client-first message is not valid: it does not start with the gs2 header 'n,,'"),
            (b"n=user,r=abc", "client-first message is not valid: it does not start with the gs2 header 'n,,'"),
            (b"y,,n=user,r=abc", "channel binding is not supported: the gs2 header must be 'n,,'"),
            (b"p=tls-unique,,n=user,r=abc", "channel binding is not supported: the gs2 header must be 'n,,'"),
            (b"n,a=admin,n=user,r=abc", "an authorization identity (authzid) in the gs2 header is not supported"),
            (b"n,,m=ext,n=user,r=abc", "client-first message is not valid: mandatory extensions ('m=') are not supported"),
            (b"n,,r=abc,n=user", "client-first message is not valid: its first attribute is not the user name 'n='"),
            (b"n,,n=user", "client-first message is not valid: its second attribute is not the nonce 'r='"),
            (b"n,,n=user,x=abc", "client-first message is not valid: its second attribute is not the nonce 'r='"),
            (b"n,,n=user,r=", "client-first message is not valid: the nonce is empty or not printable ASCII"),
            (b"n,,n=user,r=a b", "client-first message is not valid: the nonce is empty or not printable ASCII"),
            (b"n,,n=,r=abc", "client-first message is not valid: the user name is empty"),
            (b"n,,n=us=er,r=abc", "client-first message is not valid: the user name has an '=' that is not '=2C' or '=3D'"),
            ("n,,n=üser,r=abc".as_bytes(), "user name is not ASCII: SASLprep for other characters is not implemented"),
            (b"n,,n=other,r=abc", "no SCRAM user 'other' on database admin"),
            (b"n,,n=us=2Cer,r=abc", "no SCRAM user 'us,er' on database admin"),
        ];
        for (message, want) in cases {
            let err = creds.start(message, true).unwrap_err();
            assert_eq!(
                err.to_string(),
                want,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        let escaped = Credentials::with_salt("a,b=c", "pencil", b"salt", 4096).unwrap();
        assert!(escaped.start(b"n,,n=a=2Cb=3Dc,r=abc", true).is_ok());
    }

    #[test]
    fn malformed_client_final_messages() {
        let creds = rfc();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "client-final message is not valid: it does not end with the proof 'p='"),
            (format!("c=biws,r={nonce}"), "client-final message is not valid: it does not end with the proof 'p='"),
            (format!("r={nonce},p={proof}"), "client-final message is not valid: its first attribute is not the channel binding 'c='"),
            (format!("c=biws,p={proof}"), "client-final message is not valid: its second attribute is not the nonce 'r='"),
            (format!("c=eSws,r={nonce},p={proof}"), "client-final channel binding is not 'biws' (the gs2 header 'n,,')"),
            (format!("c=biws,r={nonce},p=not base64"), "client-final message is not valid: the proof is not 32 bytes in base64"),
            (format!("c=biws,r={nonce},p=AAAA"), "client-final message is not valid: the proof is not 32 bytes in base64"),
            (format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), "client proof does not match the set-up user's credentials"),
        ];
        for (message, want) in cases {
            let err = creds
                .step(started(&creds, true), message.as_bytes())
                .unwrap_err();
            assert_eq!(err.to_string(), want, "{message}");
        }
        assert_eq!(
            creds.step(started(&creds, true), b"\xff"),
            Err(ScramServerError::NotUtf8)
        );
    }

    #[test]
    fn non_ascii_passwords_are_refused_with_a_clear_error() {
        for password in ["pässword", "", "tab\there"] {
            assert_eq!(
                Credentials::with_salt("u", password, b"salt", 4096).unwrap_err(),
                "the password must be non-empty printable ASCII: SASLprep for other characters is not implemented"
            );
        }
    }
}
