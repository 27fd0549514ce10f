//! Service account tokens: the claims upstream puts in them, signing them for the
//! TokenRequest subresource, and checking the ones requests carry (signature, issuer,
//! audience, lifetime). Whether the objects a token names still exist is checked by the
//! authenticator (`authn`), which keeps what it accepted here for a few seconds.

pub mod jwt;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::authn::UserInfo;
use crate::config::ApiServerArgs;
use jwt::{LoadKeyError, SigningKey, VerifyingKey};

/// How long an accepted token is remembered before its objects are looked up again.
const REMEMBER_FOR: Duration = Duration::from_secs(10);
/// How many accepted tokens are remembered at most (the memory is emptied when full).
const REMEMBER_AT_MOST: usize = 4096;
/// How far another API server's clock may be ahead when it issued a token (upstream's
/// leeway for `nbf`).
const NOT_BEFORE_LEEWAY_SECONDS: i64 = 60;

/// The name and UID of an object a token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The object's name.
    pub name: String,
    /// The object's UID.
    pub uid: String,
}

/// Upstream's private claims, under `kubernetes.io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The node the token is bound to, or that the bound pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// The claims of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer (`--service-account-issuer`).
    pub iss: String,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub sub: String,
    /// The audiences.
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Not valid before, seconds since the epoch.
    pub nbf: i64,
    /// A unique ID (the credential ID upstream reports as `authentication.kubernetes.io/credential-id`).
    #[serde(default)]
    pub jti: String,
    /// What the token names.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

impl Claims {
    /// The user the token authenticates as.
    pub fn user(&self) -> UserInfo {
        let ns = &self.kubernetes.namespace;
        UserInfo {
            name: self.sub.clone(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_string(),
            ],
            ..UserInfo::default()
        }
    }
}

/// The user name of service account `namespace/name`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Why a token's claims were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClaimsError {
    /// The signature or the form.
    #[error(transparent)]
    Token(#[from] jwt::InvalidTokenError),
    /// The claims are not a service account token's.
    #[error("token claims are not a service account token's")]
    NotServiceAccount,
    /// Another issuer.
    #[error("token was issued by {0:?}")]
    Issuer(String),
    /// None of the API server's audiences.
    #[error("token audiences {0:?} are not the API server's")]
    Audience(Vec<String>),
    /// Expired, or not valid yet.
    #[error("token is expired or not valid yet")]
    Lifetime,
}

/// Signs and checks service account tokens.
#[derive(Debug)]
pub struct TokenIssuer {
    signing: Option<SigningKey>,
    keys: Vec<VerifyingKey>,
    issuer: String,
    audiences: Vec<String>,
    accepted: Mutex<HashMap<String, (Claims, Instant)>>,
}

impl TokenIssuer {
    /// The issuer the flags configure; `None` when they name no key (no tokens are issued or
    /// accepted then).
    pub fn from_args(args: &ApiServerArgs) -> Result<Option<Self>, LoadKeyError> {
        let signing = args
            .service_account_signing_key_file
            .as_deref()
            .map(|path| SigningKey::from_pem_file("--service-account-signing-key-file", path))
            .transpose()?;
        let mut keys = args
            .service_account_key_file
            .iter()
            .map(|path| VerifyingKey::from_pem_file("--service-account-key-file", path))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(signing) = &signing {
            let own = signing.verifying_key();
            if !keys.iter().any(|k| k.id() == own.id()) {
                keys.push(own);
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let audiences = if args.api_audiences.is_empty() {
            vec![args.service_account_issuer.clone()]
        } else {
            args.api_audiences.clone()
        };
        Ok(Some(Self::new(
            signing,
            keys,
            args.service_account_issuer.clone(),
            audiences,
        )))
    }

    fn new(
        signing: Option<SigningKey>,
        keys: Vec<VerifyingKey>,
        issuer: String,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            signing,
            keys,
            issuer,
            audiences,
            accepted: Mutex::default(),
        }
    }

    /// The OpenID Connect discovery document (`/.well-known/openid-configuration`), which lets
    /// other systems verify the tokens with the keys at `jwks_uri`: on this server at
    /// `address` (`host:port`), as upstream points it at its external address.
    pub fn openid_configuration(&self, address: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("https://{address}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The verification keys as a JSON Web Key Set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(VerifyingKey::jwk).collect::<Vec<_>>() })
    }

    /// Whether tokens are issued (a signing key is configured).
    pub fn can_issue(&self) -> bool {
        self.signing.is_some()
    }

    /// The audiences a token gets when its request names none.
    pub fn default_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Signs a token; `None` when the server has no signing key.
    pub fn issue(
        &self,
        kubernetes: KubernetesClaims,
        audiences: Vec<String>,
        issued_at: i64,
        expires_at: i64,
    ) -> Option<String> {
        let signing = self.signing.as_ref()?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: service_account_user(&kubernetes.namespace, &kubernetes.serviceaccount.name),
            aud: audiences,
            exp: expires_at,
            iat: issued_at,
            nbf: issued_at,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes,
        };
        Some(signing.sign(&serde_json::to_value(&claims).expect("claims serialize")))
    }

    /// Checks the signature, issuer, audience and lifetime of `token` at `now` (seconds since
    /// the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, InvalidClaimsError> {
        let value = jwt::verify(token, &self.keys)?;
        let claims: Claims =
            serde_json::from_value(value).map_err(|_| InvalidClaimsError::NotServiceAccount)?;
        let KubernetesClaims {
            namespace,
            serviceaccount,
            ..
        } = &claims.kubernetes;
        if claims.sub != service_account_user(namespace, &serviceaccount.name) {
            return Err(InvalidClaimsError::NotServiceAccount);
        }
        if claims.iss != self.issuer {
            return Err(InvalidClaimsError::Issuer(claims.iss));
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(InvalidClaimsError::Audience(claims.aud));
        }
        if now >= claims.exp || now + NOT_BEFORE_LEEWAY_SECONDS < claims.nbf {
            return Err(InvalidClaimsError::Lifetime);
        }
        Ok(claims)
    }

    /// The claims of a token accepted within the last few seconds and not expired since.
    pub fn recall(&self, token: &str, now: i64) -> Option<Claims> {
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        accepted
            .get(token)
            .filter(|(claims, at)| at.elapsed() < REMEMBER_FOR && now < claims.exp)
            .map(|(claims, _)| claims.clone())
    }

    /// Remembers that `token` was accepted (its objects exist).
    pub fn remember(&self, token: &str, claims: &Claims) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if accepted.len() >= REMEMBER_AT_MOST {
            accepted.retain(|_, (_, at)| at.elapsed() < REMEMBER_FOR);
            if accepted.len() >= REMEMBER_AT_MOST {
                accepted.clear();
            }
        }
        accepted.insert(token.to_string(), (claims.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn new_issuer() -> TokenIssuer {
        let generated = baton_pki::ServiceAccountKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        std::fs::write(&path, generated.key_pem).unwrap();
        let signing =
            SigningKey::from_pem_file("--service-account-signing-key-file", &path).unwrap();
        let keys = vec![signing.verifying_key()];
        TokenIssuer::new(Some(signing), keys, ISSUER.into(), vec![ISSUER.into()])
    }

    fn account() -> KubernetesClaims {
        KubernetesClaims {
            namespace: "team".into(),
            serviceaccount: ObjectRef {
                name: "builder".into(),
                uid: "u-1".into(),
            },
            pod: Some(ObjectRef {
                name: "web".into(),
                uid: "u-2".into(),
            }),
            secret: None,
            node: None,
        }
    }

    #[test]
    fn an_issued_token_names_the_account_and_its_groups() {
        let issuer = new_issuer();
        let token = issuer
            .issue(account(), vec![ISSUER.into()], 1000, 4600)
            .unwrap();
        let claims = issuer.verify(&token, 2000).unwrap();
        assert_eq!(claims.kubernetes, account());
        assert_eq!(claims.sub, "system:serviceaccount:team:builder");
        let user = claims.user();
        assert_eq!(user.name, "system:serviceaccount:team:builder");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:team",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn expired_early_or_foreign_tokens_are_refused() {
        let issuer = new_issuer();
        let token = issuer
            .issue(account(), vec![ISSUER.into()], 1000, 4600)
            .unwrap();
        assert_eq!(
            issuer.verify(&token, 4600),
            Err(InvalidClaimsError::Lifetime)
        );
        assert!(
            issuer.verify(&token, 999).is_ok(),
            "a clock a little behind"
        );
        assert_eq!(
            issuer.verify(&token, 939),
            Err(InvalidClaimsError::Lifetime)
        );
        let vault = issuer
            .issue(account(), vec!["vault".into()], 1000, 4600)
            .unwrap();
        assert_eq!(
            issuer.verify(&vault, 2000),
            Err(InvalidClaimsError::Audience(vec!["vault".into()]))
        );
        let other = new_issuer();
        assert_eq!(
            other.verify(&token, 2000),
            Err(InvalidClaimsError::Token(jwt::InvalidTokenError::Signature))
        );
    }

    #[test]
    fn accepted_tokens_are_recalled_until_they_expire() {
        let issuer = new_issuer();
        let token = issuer
            .issue(account(), vec![ISSUER.into()], 1000, 4600)
            .unwrap();
        assert!(issuer.recall(&token, 2000).is_none());
        let claims = issuer.verify(&token, 2000).unwrap();
        issuer.remember(&token, &claims);
        assert_eq!(issuer.recall(&token, 2000), Some(claims));
        assert!(issuer.recall(&token, 4600).is_none(), "expired meanwhile");
    }
}
