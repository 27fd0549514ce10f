//! Image references, normalised as the kubelet and containerd do: `busybox` is
//! `docker.io/library/busybox:latest`, `user/app` is `docker.io/user/app:latest`, a first
//! component with a `.` or `:` or `localhost` is a registry (`localhost:5000/x:1` stays), and a
//! reference pinned by digest gets no default tag.

use std::fmt;

use crate::digest::is_hex64;

/// A reference that is not a valid image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("couldn't parse image name {reference:?}: {reason}")]
pub struct ParseReferenceError {
    /// The reference as given.
    pub reference: String,
    /// Why it does not parse (e.g. `invalid reference format`).
    pub reason: String,
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageReference {
    /// Parses and normalises `reference`.
    pub fn parse(reference: &str) -> Result<Self, ParseReferenceError> {
        let error = |reason: String| ParseReferenceError {
            reference: reference.to_string(),
            reason,
        };
        // A bare image ID is not a name (the parser would read `sha256` as a repository).
        if reference.starts_with("sha256:") || is_hex64(reference) {
            return Err(error("an image ID is not an image name".to_string()));
        }
        let parsed: oci_client::Reference = reference
            .parse()
            .map_err(|e: oci_client::ParseError| error(e.to_string()))?;
        Ok(Self {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest: parsed.digest().map(str::to_string),
        })
    }

    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` is added when neither tag nor digest is given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest the reference is pinned to, if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest`, when the reference has a digest.
    pub fn digested(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }

    /// The same name pinned to `digest` (without a tag).
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The reference in oci-client's form.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
                digest.clone(),
            ),
            (None, Some(digest)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `reference` in its full normalised form (`busybox` -> `docker.io/library/busybox:latest`).
pub fn normalize_reference(reference: &str) -> Result<String, ParseReferenceError> {
    ImageReference::parse(reference).map(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn normalises_like_the_kubelet() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost:5000/x:1", "localhost:5000/x:1"),
            ("localhost/x", "localhost/x:latest"),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn digests_pin_without_a_default_tag() {
        let r = ImageReference::parse(&format!("busybox@{DIGEST}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{DIGEST}"));
        assert_eq!(r.tagged(), None);
        let both = ImageReference::parse(&format!("localhost:5000/x:1@{DIGEST}")).unwrap();
        assert_eq!(both.tagged().as_deref(), Some("localhost:5000/x:1"));
        assert_eq!(both.digested(), Some(format!("localhost:5000/x@{DIGEST}")));
    }

    #[test]
    fn rejects_invalid_names_and_ids() {
        for bad in ["", "Busybox", "a//b", "x:", DIGEST, &DIGEST[7..]] {
            let err = ImageReference::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("couldn't parse image name"),
                "{err}"
            );
        }
    }
}
