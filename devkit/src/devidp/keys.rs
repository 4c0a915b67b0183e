//! Signing keys of the development IdP and JWS compact serialisation.
//!
//! Tokens are assembled and signed here directly with `rsa` / `p256` rather
//! than through `jsonwebtoken::encode`, because tests need headers taken
//! verbatim (forged `kid`, `typ`, even an `alg` that does not match the key),
//! which `jsonwebtoken::Header` cannot express.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};
use sha2::Sha256;

/// Signature algorithms the development IdP signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over an RSA-2048 key.
    Rs256,
    /// ECDSA over P-256 with SHA-256.
    Es256,
}

impl DevAlg {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            DevAlg::Rs256 => "RS256",
            DevAlg::Es256 => "ES256",
        }
    }
}

impl fmt::Display for DevAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DevAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(DevAlg::Rs256),
            "ES256" => Ok(DevAlg::Es256),
            other => Err(format!("unsupported alg {other:?} (RS256 or ES256)")),
        }
    }
}

enum Signer {
    // Boxed: an RSA key is much larger than a P-256 one.
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Ec(p256::ecdsa::SigningKey),
}

/// One signing key with its public JWK.
pub(crate) struct DevKey {
    pub(crate) kid: String,
    pub(crate) alg: DevAlg,
    pub(crate) jwk: Value,
    signer: Signer,
}

impl fmt::Debug for DevKey {
    // Never print key material, even in a dev tool's debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `n` random bytes, hex-encoded (kids, jtis).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes, base64url (codes and refresh tokens: URL-safe so that
/// clients which forget to form-encode them still work).
pub(crate) fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    b64(buf)
}

impl DevKey {
    /// Generates a fresh key with a random 8-byte hex `kid`.
    pub(crate) fn generate(alg: DevAlg) -> Result<DevKey, String> {
        let kid = random_hex(8);
        match alg {
            DevAlg::Rs256 => {
                let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048)
                    .map_err(|e| format!("RSA key generation: {e}"))?;
                let jwk = json!({
                    "kty": "RSA",
                    "kid": kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64(key.n().to_bytes_be()),
                    "e": b64(key.e().to_bytes_be()),
                });
                Ok(DevKey {
                    kid,
                    alg,
                    jwk,
                    signer: Signer::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
                })
            }
            DevAlg::Es256 => {
                let key = p256::ecdsa::SigningKey::random(&mut OsRng);
                let point = key.verifying_key().to_encoded_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err("P-256 public key has no affine coordinates".into());
                };
                let jwk = json!({
                    "kty": "EC",
                    "kid": kid,
                    "alg": "ES256",
                    "use": "sig",
                    "crv": "P-256",
                    "x": b64(x),
                    "y": b64(y),
                });
                Ok(DevKey {
                    kid,
                    alg,
                    jwk,
                    signer: Signer::Ec(key),
                })
            }
        }
    }

    /// JWS compact serialisation of `header` and `claims` (both taken
    /// verbatim) signed with this key.
    pub(crate) fn sign_compact(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = match &self.signer {
            // Randomised (blinded) signing: the deterministic path skips RSA
            // blinding and would leak timing about the private key.
            Signer::Rsa(k) => k
                .try_sign_with_rng(&mut OsRng, input.as_bytes())
                .map_err(|e| format!("RS256 signing: {e}"))?
                .to_vec(),
            // JWS wants the fixed 64-byte r||s form, which `to_bytes` gives.
            Signer::Ec(k) => {
                let s: p256::ecdsa::Signature = k.sign(input.as_bytes());
                s.to_bytes().to_vec()
            }
        };
        Ok(format!("{input}.{}", b64(sig)))
    }
}

/// `b64(header).b64(claims).` with an empty signature, as `alg: none` tokens look.
pub(crate) fn unsigned_compact(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64(header.to_string()), b64(claims.to_string()))
}
