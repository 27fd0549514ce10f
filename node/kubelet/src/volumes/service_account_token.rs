//! Service account tokens for projected volumes, from the API server's TokenRequest, bound to
//! the pod. Each token is kept and handed out again until 80% of its lifetime (or 24 hours)
//! has passed, then requested anew, as upstream's kubelet token manager does; the pod worker's
//! periodic volume refresh writes the new one into the volume.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// What a projection asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub account: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its UID.
    pub pod_uid: String,
    /// The audience (`None`: the API server's).
    pub audience: Option<String>,
    /// The lifetime asked for.
    pub expiration_seconds: i64,
}

/// A token and the times that decide when to replace it (seconds since the epoch).
#[derive(Debug, Clone)]
struct Issued {
    token: String,
    issued_at: i64,
    expires_at: i64,
}

impl Issued {
    /// Whether it is time for a new token: past 80% of the lifetime, or older than a day.
    fn needs_refresh(&self, now: i64) -> bool {
        let lifetime = self.expires_at - self.issued_at;
        now >= self.issued_at + lifetime * 8 / 10 || now >= self.issued_at + 24 * 3600
    }
}

/// The tokens the kubelet holds for its pods.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenSpec, Issued>>,
}

impl TokenCache {
    /// A token for `spec`: the one held, unless it is due for refresh; else a new one from the
    /// API server. Errors are the API's message.
    pub async fn get(&self, client: &Client, spec: &TokenSpec) -> Result<String, String> {
        let now = jiff::Timestamp::now().as_second();
        if let Some(held) = self.held(spec)
            && !held.needs_refresh(now)
        {
            return Ok(held.token);
        }
        match request(client, spec).await {
            Ok(issued) => {
                let token = issued.token.clone();
                let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
                tokens.retain(|_, t| t.expires_at > now);
                tokens.insert(spec.clone(), issued);
                Ok(token)
            }
            // Upstream keeps using a token that has not expired when the refresh fails.
            Err(message) => match self.held(spec).filter(|held| held.expires_at > now) {
                Some(held) => {
                    tracing::warn!(
                        pod = spec.pod_name,
                        error = message,
                        "refreshing a service account token failed; the current one is still valid"
                    );
                    Ok(held.token)
                }
                None => Err(message),
            },
        }
    }

    fn held(&self, spec: &TokenSpec) -> Option<Issued> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(spec).cloned()
    }

    /// Forgets the tokens of pod `uid` (it is gone).
    pub fn forget_pod(&self, uid: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|spec, _| spec.pod_uid != uid);
    }
}

async fn request(client: &Client, spec: &TokenSpec) -> Result<Issued, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &spec.namespace);
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: spec.audience.iter().cloned().collect(),
            expiration_seconds: Some(spec.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(spec.pod_name.clone()),
                uid: Some(spec.pod_uid.clone()),
            }),
        },
        status: None,
    };
    let answer = api
        .create_token_request(&spec.account, &PostParams::default(), &request)
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) if !status.message.is_empty() => status.message,
            other => other.to_string(),
        })?;
    let status = answer
        .status
        .ok_or_else(|| "the TokenRequest answer has no status".to_string())?;
    // Both times on the API server's clock, as upstream reckons a token's age.
    let expires_at = status.expiration_timestamp.0.as_second();
    let lifetime = answer
        .spec
        .expiration_seconds
        .unwrap_or(spec.expiration_seconds);
    Ok(Issued {
        token: status.token,
        issued_at: expires_at - lifetime,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_at_80_percent_of_its_life_or_after_a_day() {
        let hour = Issued {
            token: "t".into(),
            issued_at: 1000,
            expires_at: 1000 + 3607,
        };
        assert!(!hour.needs_refresh(1000 + 2800));
        assert!(hour.needs_refresh(1000 + 2885));
        let year = Issued {
            token: "t".into(),
            issued_at: 0,
            expires_at: 365 * 24 * 3600,
        };
        assert!(!year.needs_refresh(23 * 3600));
        assert!(year.needs_refresh(24 * 3600));
    }
}
