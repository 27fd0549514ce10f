//! JSON Web Tokens signed with ES256 (ECDSA P-256 with SHA-256, RFC 7518), in the compact form
//! of RFC 7515: `base64url(header).base64url(claims).base64url(signature)`. ring does the
//! cryptography; the three parts are put together here.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};

/// The DER prefix of a SubjectPublicKeyInfo holding an uncompressed P-256 point (RFC 5480):
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadKeyError {
    /// The file could not be read.
    #[error("{flag}: reading {path}: {source}")]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no key of the kind Baton signs and verifies with.
    #[error(
        "{flag}: {path}: {reason}; service account keys are ECDSA P-256, PEM (\"BEGIN PRIVATE KEY\" in PKCS#8, or \"BEGIN PUBLIC KEY\")"
    )]
    Parse {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTokenError {
    /// Not three base64url parts with a JSON header and claims.
    #[error("token is malformed")]
    Malformed,
    /// The header names another algorithm than ES256.
    #[error("token is signed with {0:?}, not ES256")]
    Algorithm(String),
    /// No verification key accepts the signature.
    #[error("token signature is invalid")]
    Signature,
}

/// The key ID of a public key, as upstream derives it: the unpadded base64url of the SHA-256
/// of its SubjectPublicKeyInfo DER.
fn key_id(point: &[u8]) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki))
}

/// The bytes of the key file `flag` names.
fn read_key_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, LoadKeyError> {
    std::fs::read(path).map_err(|source| LoadKeyError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// A key that verifies tokens.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    /// The uncompressed P-256 point.
    point: Vec<u8>,
}

impl VerifyingKey {
    /// Reads a public key (or the public half of a private key) from a PEM file.
    pub fn from_pem_file(flag: &'static str, path: &Path) -> Result<Self, LoadKeyError> {
        let pem = read_key_file(flag, path)?;
        let parse_error = |reason: &str| LoadKeyError::Parse {
            flag,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(&pem) {
            let der = spki.as_ref();
            return match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
                Some(point) if point.len() == 65 => Ok(Self {
                    point: point.to_vec(),
                }),
                _ => Err(parse_error("the public key is not an ECDSA P-256 key")),
            };
        }
        match SigningKey::from_pem(&pem) {
            Ok(signing) => Ok(signing.verifying_key()),
            Err(reason) => Err(parse_error(&reason)),
        }
    }

    /// This key's ID (the `kid` of the tokens it verifies).
    pub fn id(&self) -> String {
        key_id(&self.point)
    }

    /// The key as a JSON Web Key (RFC 7517, 7518): the coordinates of the point.
    pub fn jwk(&self) -> Value {
        let (x, y) = self.point[1..].split_at(32);
        json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.id(),
            "crv": "P-256",
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }
}

/// The key that signs tokens.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem_file(flag: &'static str, path: &Path) -> Result<Self, LoadKeyError> {
        let pem = read_key_file(flag, path)?;
        Self::from_pem(&pem).map_err(|reason| LoadKeyError::Parse {
            flag,
            path: path.to_path_buf(),
            reason,
        })
    }

    fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| "no PKCS#8 private key or public key in the file".to_string())?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("the private key is not an ECDSA P-256 key ({e})"))?;
        let kid = key_id(pair.public_key().as_ref());
        Ok(Self { pair, rng, kid })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "ES256", "kid": self.kid });
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .expect("ECDSA signing with the system's random source");
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }
}

/// Checks `token`'s signature against `keys` and returns its claims (nothing else about them
/// is checked here).
pub fn verify(token: &str, keys: &[VerifyingKey]) -> Result<Value, InvalidTokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidTokenError::Malformed);
    };
    let decode_json = |part: &str| -> Result<Value, InvalidTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| InvalidTokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| InvalidTokenError::Malformed)
    };
    let header_json = decode_json(header)?;
    match header_json["alg"].as_str() {
        Some("ES256") => {}
        Some(other) => return Err(InvalidTokenError::Algorithm(other.to_string())),
        None => return Err(InvalidTokenError::Malformed),
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| InvalidTokenError::Malformed)?;
    let signed = &token.as_bytes()[..header.len() + 1 + claims.len()];
    let accepted = keys.iter().any(|key| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
            .verify(signed, &signature)
            .is_ok()
    });
    if !accepted {
        return Err(InvalidTokenError::Signature);
    }
    decode_json(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let generated = baton_pki::ServiceAccountKey::generate().unwrap();
        SigningKey::from_pem(generated.key_pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let signing = key();
        let claims = json!({ "sub": "system:serviceaccount:default:default" });
        let token = signing.sign(&claims);
        assert_eq!(verify(&token, &[signing.verifying_key()]), Ok(claims));
        let other = key();
        assert_eq!(
            verify(&token, &[other.verifying_key()]),
            Err(InvalidTokenError::Signature)
        );
        // Any of several keys may verify it (rotation keeps the old key listed).
        assert!(verify(&token, &[other.verifying_key(), signing.verifying_key()]).is_ok());
    }

    #[test]
    fn altered_or_unsigned_tokens_are_refused() {
        let signing = key();
        let keys = [signing.verifying_key()];
        let token = signing.sign(&json!({ "sub": "a" }));
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(json!({ "sub": "b" }).to_string());
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(verify(&forged, &keys), Err(InvalidTokenError::Signature));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            verify(&none, &keys),
            Err(InvalidTokenError::Algorithm("none".into()))
        );
        assert_eq!(verify("abc", &keys), Err(InvalidTokenError::Malformed));
        assert_eq!(
            verify(&format!("{token}.x"), &keys),
            Err(InvalidTokenError::Malformed)
        );
    }

    #[test]
    fn the_jwk_holds_the_point_that_verifies_tokens() {
        let signing = key();
        let token = signing.sign(&json!({ "sub": "a" }));
        let jwk = signing.verifying_key().jwk();
        assert_eq!(jwk["kid"], signing.kid);
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let mut point = vec![4u8];
        point.extend(coordinate("x"));
        point.extend(coordinate("y"));
        let rebuilt = VerifyingKey { point };
        assert!(verify(&token, &[rebuilt]).is_ok());
    }

    #[test]
    fn the_key_id_matches_the_public_key_file() {
        let generated = baton_pki::ServiceAccountKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("sa.pub");
        let private = dir.path().join("sa.key");
        std::fs::write(&public, &generated.public_pem).unwrap();
        std::fs::write(&private, &generated.key_pem).unwrap();
        let from_public =
            VerifyingKey::from_pem_file("--service-account-key-file", &public).unwrap();
        let from_private =
            VerifyingKey::from_pem_file("--service-account-key-file", &private).unwrap();
        let signing =
            SigningKey::from_pem_file("--service-account-signing-key-file", &private).unwrap();
        assert_eq!(from_public.id(), signing.kid);
        assert_eq!(from_private.id(), signing.kid);
        std::fs::write(&public, "not a key").unwrap();
        let err = VerifyingKey::from_pem_file("--service-account-key-file", &public)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--service-account-key-file: "), "{err}");
        assert!(err.contains("sa.pub"), "{err}");
    }
}
