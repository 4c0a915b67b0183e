//! The SCRAM-SHA-256 client (RFC 5802 and RFC 7677) as MongoDB speaks it:
//! no channel binding (`n,,`), the password prepared with SASLprep, and the
//! server's signature verified before the conversation counts as done.
//!
//! Pure functions over bytes: the caller carries the messages in
//! `saslStart`/`saslContinue`. The PBKDF2 output is cached because the server
//! salts each user once, so every new backend connection for the same user
//! would otherwise repeat its (by default 15000) iterations.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// RFC 7677 requires at least 4096 iterations; fewer means a weak or hostile server.
pub const MIN_ITERATIONS: u32 = 4096;
/// A bound on the work a hostile backend can make us do per connection.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Bounds on server-sent fields, so a hostile reply cannot make us allocate much.
const MAX_SALT_BYTES: usize = 1024;
const MAX_SERVER_MESSAGE: usize = 4096;
/// Entries kept in the salted-password cache; one per (user, password, salt).
const CACHE_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("the password is empty")]
    EmptyPassword,
    #[error(
        "the password contains non-ASCII characters; SASLprep for them is not implemented, \
         use an ASCII password for the backend user"
    )]
    NonAsciiPassword,
    #[error("the password contains a control character, which SASLprep prohibits")]
    ControlCharacterInPassword,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("server-first message is not valid: {0}")]
    BadServerFirst(String),
    #[error("server-first message is missing the '{0}' attribute")]
    Missing(char),
    #[error(
        "the server nonce does not extend the client nonce; the reply is not for this conversation"
    )]
    NonceMismatch,
    #[error("the salt is not valid base64")]
    BadSalt,
    #[error("iteration count {0} is below the minimum of {MIN_ITERATIONS}")]
    IterationsTooLow(u32),
    #[error("iteration count {0} is above the maximum of {MAX_ITERATIONS}")]
    IterationsTooHigh(u32),
    #[error("server-final message is not valid: {0}")]
    BadServerFinal(String),
    #[error("the server reported an error: {0}")]
    ServerError(String),
    #[error(
        "the server signature does not match; the server does not know this user's credentials"
    )]
    BadServerSignature,
    #[error("message out of order: {0}")]
    OutOfOrder(&'static str),
}

/// SASLprep (RFC 4013) for ASCII passwords: printable ASCII maps to itself;
/// ASCII control characters are prohibited. Other code points need the full
/// stringprep tables, which this proxy does not carry, so they are refused.
pub fn saslprep_ascii(password: &str) -> Result<&str, ScramError> {
    if password.is_empty() {
        return Err(ScramError::EmptyPassword);
    }
    for b in password.bytes() {
        if !b.is_ascii() {
            return Err(ScramError::NonAsciiPassword);
        }
        if b.is_ascii_control() {
            return Err(ScramError::ControlCharacterInPassword);
        }
    }
    Ok(password)
}

/// RFC 5802 `saslname`: ',' and '=' in a user name are escaped.
pub fn escape_user(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// A bounded cache of PBKDF2 outputs. The key is a digest of user, password,
/// salt and iteration count, so no password is kept as a map key.
#[derive(Default)]
pub struct SaltedPasswordCache {
    map: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    /// Sign-ins that went to the blocking pool, which only a miss should.
    blocking_tasks: AtomicU64,
}

impl fmt::Debug for SaltedPasswordCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltedPasswordCache")
    }
}

impl SaltedPasswordCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many sign-ins sent their key derivation to the blocking pool.
    pub fn blocking_tasks(&self) -> u64 {
        self.blocking_tasks.load(Ordering::Relaxed)
    }

    pub(crate) fn count_blocking_task(&self) {
        self.blocking_tasks.fetch_add(1, Ordering::Relaxed);
    }

    fn key(user: &str, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [user.as_bytes(), password.as_bytes(), salt] {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(iterations.to_le_bytes());
        h.finalize().into()
    }

    /// Hi(password, salt, i) if it is cached; never derives.
    pub fn cached(
        &self,
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Option<[u8; 32]> {
        let key = Self::key(user, password, salt, iterations);
        self.map.lock().ok()?.get(&key).copied()
    }

    /// Hi(password, salt, i) from RFC 5802, computed at most once per key.
    pub fn salted_password(
        &self,
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> [u8; 32] {
        let key = Self::key(user, password, salt, iterations);
        if let Ok(m) = self.map.lock() {
            if let Some(v) = m.get(&key) {
                return *v;
            }
        }
        // Computed outside the lock: PBKDF2 takes milliseconds.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CACHE_CAPACITY {
                // Crude but bounded: credentials rarely change, so a full
                // cache means churn, and starting over is cheap.
                m.clear();
            }
            m.insert(key, out);
        }
        out
    }
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so the fallback never runs.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

enum State {
    Initial,
    SentClientFinal { server_signature: [u8; 32] },
    Done,
}

/// One client-side SCRAM-SHA-256 conversation.
pub struct ScramSha256 {
    user: String,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    state: State,
}

impl fmt::Debug for ScramSha256 {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSha256")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramSha256 {
    /// Starts a conversation with a fresh random nonce (24 bytes, as drivers use).
    pub fn new(user: &str, password: &str) -> Result<Self, ScramError> {
        let mut raw = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        Self::with_nonce(user, password, &B64.encode(raw))
    }

    /// Starts a conversation with a given nonce (for tests with known vectors).
    pub fn with_nonce(user: &str, password: &str, nonce: &str) -> Result<Self, ScramError> {
        if user.is_empty() {
            return Err(ScramError::EmptyUser);
        }
        let password = saslprep_ascii(password)?.to_string();
        let client_first_bare = format!("n={},r={nonce}", escape_user(user));
        Ok(ScramSha256 {
            user: user.to_string(),
            password,
            client_nonce: nonce.to_string(),
            client_first_bare,
            state: State::Initial,
        })
    }

    /// The client-first message (`saslStart` payload).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Takes the server-first message and returns the client-final message
    /// (`saslContinue` payload), deriving the salted password on a cache miss.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        cache: &SaltedPasswordCache,
    ) -> Result<Vec<u8>, ScramError> {
        let sf = self.check_server_first(server_first)?;
        let salted = cache.salted_password(&self.user, &self.password, &sf.salt, sf.iterations);
        Ok(self.finish_client_final(&sf, &salted))
    }

    /// As `client_final` when the salted password is cached; `Ok(None)`,
    /// with the conversation unchanged, when it would have to be derived.
    /// Lets the caller compute the proofs inline and leave only PBKDF2 to
    /// the blocking pool.
    pub fn client_final_if_cached(
        &mut self,
        server_first: &[u8],
        cache: &SaltedPasswordCache,
    ) -> Result<Option<Vec<u8>>, ScramError> {
        let sf = self.check_server_first(server_first)?;
        let Some(salted) = cache.cached(&self.user, &self.password, &sf.salt, sf.iterations) else {
            return Ok(None);
        };
        Ok(Some(self.finish_client_final(&sf, &salted)))
    }

    fn check_server_first<'a>(
        &self,
        server_first: &'a [u8],
    ) -> Result<ServerFirst<'a>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder("server-first received twice"));
        }
        let sf = parse_server_first(server_first)?;
        if !sf.nonce.starts_with(&self.client_nonce) || sf.nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        Ok(sf)
    }

    fn finish_client_final(&mut self, sf: &ServerFirst<'_>, salted: &[u8; 32]) -> Vec<u8> {
        let client_key = hmac(salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        // "biws" is base64("n,,"): no channel binding, no authzid.
        let without_proof = format!("c=biws,r={}", sf.nonce);
        let auth_message = format!("{},{},{}", self.client_first_bare, sf.raw, without_proof);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        let server_key = hmac(salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        self.state = State::SentClientFinal { server_signature };
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Checks the server-final message. Only after this succeeds is the
    /// server known to hold the user's credentials.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::SentClientFinal { server_signature } = self.state else {
            return Err(ScramError::OutOfOrder("server-final before server-first"));
        };
        let text = bounded_utf8(server_final).map_err(ScramError::BadServerFinal)?;
        // Extensions after the verifier are allowed by RFC 5802; only the first attribute counts.
        let first = text.split(',').next().unwrap_or("");
        if let Some(e) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.chars().take(200).collect()));
        }
        let Some(v) = first.strip_prefix("v=") else {
            return Err(ScramError::BadServerFinal(
                "expected 'v=' (verifier) or 'e=' (error)".into(),
            ));
        };
        let sig = B64
            .decode(v)
            .map_err(|_| ScramError::BadServerFinal("the verifier is not valid base64".into()))?;
        // Constant-time comparison: the signature is a MAC.
        let mut ok = sig.len() == server_signature.len();
        let mut diff = 0u8;
        for (a, b) in sig.iter().zip(server_signature.iter()) {
            diff |= a ^ b;
        }
        ok &= diff == 0;
        if !ok {
            return Err(ScramError::BadServerSignature);
        }
        self.state = State::Done;
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

struct ServerFirst<'a> {
    raw: &'a str,
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

fn bounded_utf8(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() > MAX_SERVER_MESSAGE {
        return Err(format!("longer than {MAX_SERVER_MESSAGE} bytes"));
    }
    std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

fn parse_server_first(bytes: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    let raw = bounded_utf8(bytes).map_err(ScramError::BadServerFirst)?;
    let mut nonce = None;
    let mut salt = None;
    let mut iterations = None;
    for attr in raw.split(',') {
        let (name, value) = match attr.split_once('=') {
            Some((n, v)) if n.len() == 1 => (n, v),
            _ => {
                return Err(ScramError::BadServerFirst(format!(
                    "'{}' is not an attribute",
                    attr.chars().take(40).collect::<String>()
                )))
            }
        };
        let slot = match name {
            "r" => &mut nonce,
            "s" => &mut salt,
            "i" => &mut iterations,
            // 'm' is a mandatory extension we do not know, so we must fail;
            // anything else is not part of a server-first message.
            other => {
                return Err(ScramError::BadServerFirst(format!(
                    "unexpected attribute '{other}'"
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(ScramError::BadServerFirst(format!(
                "attribute '{name}' repeated"
            )));
        }
    }
    let nonce = nonce.ok_or(ScramError::Missing('r'))?;
    let salt_b64 = salt.ok_or(ScramError::Missing('s'))?;
    let iterations = iterations.ok_or(ScramError::Missing('i'))?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ScramError::BadServerFirst(
            "the nonce is empty or not printable".into(),
        ));
    }
    let salt = B64.decode(salt_b64).map_err(|_| ScramError::BadSalt)?;
    if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
        return Err(ScramError::BadServerFirst(format!(
            "salt length {} is outside 1..={MAX_SALT_BYTES}",
            salt.len()
        )));
    }
    let iterations: u32 = iterations.parse().map_err(|_| {
        ScramError::BadServerFirst(format!(
            "iteration count '{}' is not a number",
            iterations.chars().take(20).collect::<String>()
        ))
    })?;
    if iterations < MIN_ITERATIONS {
        return Err(ScramError::IterationsTooLow(iterations));
    }
    if iterations > MAX_ITERATIONS {
        return Err(ScramError::IterationsTooHigh(iterations));
    }
    Ok(ServerFirst {
        raw,
        nonce,
        salt,
        iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn conv() -> ScramSha256 {
        ScramSha256::with_nonce("user", "pencil", NONCE).unwrap()
    }

    fn first_err(server_first: &str) -> String {
        conv()
            .client_final(server_first.as_bytes(), &SaltedPasswordCache::new())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rfc7677_test_vector() {
        let cache = SaltedPasswordCache::new();
        let mut c = conv();
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c.client_final(SERVER_FIRST.as_bytes(), &cache).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        assert!(!c.is_done());
        c.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert!(c.is_done());
    }

    #[test]
    fn salted_password_is_cached() {
        let cache = SaltedPasswordCache::new();
        let mut a = conv();
        a.client_final(SERVER_FIRST.as_bytes(), &cache).unwrap();
        assert_eq!(cache.len(), 1);
        let mut b = conv();
        let fin = b.client_final(SERVER_FIRST.as_bytes(), &cache).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        assert_eq!(cache.len(), 1);
        // A different password is a different entry, not a wrong hit.
        let mut c = ScramSha256::with_nonce("user", "pencil2", NONCE).unwrap();
        c.client_final(SERVER_FIRST.as_bytes(), &cache).unwrap();
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn escapes_user_names() {
        let c = ScramSha256::with_nonce("a=b,c", "p", "xyz").unwrap();
        assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=xyz");
    }

    #[test]
    fn refuses_passwords_saslprep_cannot_handle() {
        let e = |p: &str| {
            ScramSha256::with_nonce("u", p, "n")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(e(""), "the password is empty");
        assert_eq!(
            e("pässword"),
            "the password contains non-ASCII characters; SASLprep for them is not implemented, \
             use an ASCII password for the backend user"
        );
        assert_eq!(
            e("a\tb"),
            "the password contains a control character, which SASLprep prohibits"
        );
        assert_eq!(
            ScramSha256::with_nonce("", "p", "n")
                .unwrap_err()
                .to_string(),
            "the user name is empty"
        );
        assert_eq!(saslprep_ascii("I X ~!").unwrap(), "I X ~!");
    }

    #[test]
    fn refuses_malformed_server_first() {
        assert_eq!(
            first_err("s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            "server-first message is missing the 'r' attribute"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,i=4096"),
            "server-first message is missing the 's' attribute"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            "server-first message is missing the 'i' attribute"
        );
        assert_eq!(
            first_err("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            "the server nonce does not extend the client nonce; the reply is not for this conversation"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            "the server nonce does not extend the client nonce; the reply is not for this conversation"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=***,i=4096"),
            "the salt is not valid base64"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=,i=4096"),
            "server-first message is not valid: salt length 0 is outside 1..=1024"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095"),
            "iteration count 4095 is below the minimum of 4096"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001"),
            "iteration count 10000001 is above the maximum of 10000000"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"),
            "server-first message is not valid: iteration count '-1' is not a number"
        );
        assert_eq!(
            first_err("m=ext,r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            "server-first message is not valid: unexpected attribute 'm'"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqOxx,r=rOprNGfwEbeRWgbNEkqOyy,s=AA==,i=4096"),
            "server-first message is not valid: attribute 'r' repeated"
        );
        assert_eq!(
            first_err("garbage"),
            "server-first message is not valid: 'garbage' is not an attribute"
        );
        assert_eq!(
            first_err("r=rOprNGfwEbeRWgbNEkqO x,s=AA==,i=4096"),
            "server-first message is not valid: the nonce is empty or not printable"
        );
        assert_eq!(
            conv()
                .client_final(&[0xff, 0xfe], &SaltedPasswordCache::new())
                .unwrap_err()
                .to_string(),
            "server-first message is not valid: not UTF-8"
        );
        assert_eq!(
            first_err(&"r".repeat(5000)),
            "server-first message is not valid: longer than 4096 bytes"
        );
    }

    fn at_final() -> ScramSha256 {
        let mut c = conv();
        c.client_final(SERVER_FIRST.as_bytes(), &SaltedPasswordCache::new())
            .unwrap();
        c
    }

    #[test]
    fn refuses_malformed_or_wrong_server_final() {
        let e = |m: &str| {
            at_final()
                .verify_server_final(m.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            "the server signature does not match; the server does not know this user's credentials"
        );
        assert_eq!(
            e("v=AAAA"),
            "the server signature does not match; the server does not know this user's credentials"
        );
        assert_eq!(
            e("v=%%%"),
            "server-final message is not valid: the verifier is not valid base64"
        );
        assert_eq!(
            e("x=1"),
            "server-final message is not valid: expected 'v=' (verifier) or 'e=' (error)"
        );
        assert_eq!(
            e("e=invalid-proof"),
            "the server reported an error: invalid-proof"
        );
        assert_eq!(
            conv()
                .verify_server_final(SERVER_FINAL.as_bytes())
                .unwrap_err()
                .to_string(),
            "message out of order: server-final before server-first"
        );
        let mut c = at_final();
        assert_eq!(
            c.client_final(SERVER_FIRST.as_bytes(), &SaltedPasswordCache::new())
                .unwrap_err()
                .to_string(),
            "message out of order: server-first received twice"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = conv();
        assert!(!format!("{c:?}").contains("pencil"));
    }
}
