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
        let error = |reason: &str| ParseReferenceError {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if is_image_id(reference) {
            return Err(error("an image ID is not an image name"));
        }
        // As the distribution library's ParseNormalizedNamed: the registry and repository
        // first, the repository checked for capitals, then the normalised whole parsed.
        let (registry, remainder) = split_domain(reference);
        let repository_part = remainder.split(':').next().unwrap_or_default();
        if repository_part.to_ascii_lowercase() != repository_part {
            return Err(error(&format!(
                "invalid reference format: repository name ({repository_part}) must be lowercase"
            )));
        }
        let normalized = format!("{registry}/{remainder}");
        let parts = split_reference(&normalized).map_err(|err| error(err.reason()))?;
        // The name starts with `registry/`: the registry holds no `@` that would start the
        // digest (a digest never holds the `/` after it), and the tag comes after the last `/`.
        let repository = &parts.name[registry.len() + 1..];
        if repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(error(GrammarError::NameTooLong.reason()));
        }
        Ok(Self {
            repository: repository.to_string(),
            registry: registry.to_string(),
            tag: match (parts.tag, parts.digest) {
                (None, None) => Some("latest".to_string()),
                (tag, _) => tag.map(str::to_string),
            },
            digest: parts.digest.map(str::to_string),
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

/// Whether `reference` names an image by its ID (`sha256:<hex>`, or 64 hex digits) rather than
/// by name; [`ImageReference::parse`] refuses those (the grammar would read `sha256` as a
/// repository), and the store looks them up as IDs.
pub fn is_image_id(reference: &str) -> bool {
    reference.starts_with("sha256:") || is_hex64(reference)
}

/// `reference` in its full normalised form (`busybox` -> `docker.io/library/busybox:latest`).
pub fn normalize_reference(reference: &str) -> Result<String, ParseReferenceError> {
    ImageReference::parse(reference).map(|r| r.to_string())
}

/// The parts of a reference as written: `name[:tag][@digest]`.
#[derive(Debug, PartialEq, Eq)]
struct ReferenceParts<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Why a reference does not follow the grammar; the reasons are the distribution library's
/// texts (and go-digest's, for digests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrammarError {
    NameContainsUppercase,
    NameTooLong,
    InvalidFormat,
    DigestInvalidFormat,
    DigestInvalidLength,
    DigestUnsupported,
}

impl GrammarError {
    fn reason(self) -> &'static str {
        match self {
            Self::NameContainsUppercase => "repository name must be lowercase",
            Self::NameTooLong => "repository name must not be more than 255 characters",
            Self::InvalidFormat => "invalid reference format",
            Self::DigestInvalidFormat => "invalid checksum digest format",
            Self::DigestInvalidLength => "invalid checksum digest length",
            Self::DigestUnsupported => "unsupported digest algorithm",
        }
    }
}

/// The longest repository path the distribution library allows (the registry not counted,
/// since its v0.6).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Splits `reference` by the grammar of the distribution library's references (what Docker,
/// containerd and the kubelet accept):
///
/// ```text
/// reference        := name [ ":" tag ] [ "@" digest ]
/// name             := [ domain "/" ] path-component [ "/" path-component ]*
/// domain           := host [ ":" [0-9]+ ]
/// host             := domain-component [ "." domain-component ]* | "[" [a-fA-F0-9:]+ "]"
/// domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
/// path-component   := [a-z0-9]+ [ separator [a-z0-9]+ ]*
/// separator        := "." | "_" | "__" | "-"*
/// tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
/// digest           := algorithm ":" [0-9a-fA-F]{32,}
/// algorithm        := [A-Za-z][A-Za-z0-9]* [ [-_+.] [A-Za-z][A-Za-z0-9]* ]*
/// ```
///
/// By hand rather than through oci-spec's regular expression: its Unicode `\w{0,127}` for
/// the tag compiles into about 7 MiB of automaton that every process parsing a reference kept
/// for good (the kubelet's largest allocation, measured with dhat).
fn split_reference(reference: &str) -> Result<ReferenceParts<'_>, GrammarError> {
    let parts = split_by_grammar(reference).ok_or_else(|| {
        // As the distribution library does: a reference valid but for its capitals.
        if split_by_grammar(&reference.to_ascii_lowercase()).is_some() {
            GrammarError::NameContainsUppercase
        } else {
            GrammarError::InvalidFormat
        }
    })?;
    if let Some(digest) = parts.digest {
        check_digest(digest)?;
    }
    Ok(parts)
}

/// The parts of `reference` when it follows the grammar.
fn split_by_grammar(reference: &str) -> Option<ReferenceParts<'_>> {
    // Neither names nor tags contain `@`, and digests contain no `@`: the first one starts
    // the digest.
    let (before_digest, digest) = match reference.split_once('@') {
        Some((before, digest)) => (before, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|digest| !is_digest_syntax(digest)) {
        return None;
    }
    // A `:` after the last `/` starts the tag; one before it ends a registry host.
    let last_slash = before_digest.rfind('/').map_or(0, |at| at + 1);
    let (name, tag) = match before_digest[last_slash..].rfind(':') {
        Some(at) => {
            let at = last_slash + at;
            (&before_digest[..at], Some(&before_digest[at + 1..]))
        }
        None => (before_digest, None),
    };
    if tag.is_some_and(|tag| !is_tag(tag)) || !is_name(name) {
        return None;
    }
    Some(ReferenceParts { name, tag, digest })
}

/// `[ domain "/" ] path-component [ "/" path-component ]*`.
fn is_name(name: &str) -> bool {
    let all_paths = |components: &str| components.split('/').all(is_path_component);
    all_paths(name)
        || name
            .split_once('/')
            .is_some_and(|(domain, rest)| is_domain(domain) && all_paths(rest))
}

/// `[a-z0-9]+` runs joined by one `.`, one `_`, two `_`, or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut rest = component.as_bytes();
    loop {
        let run = rest.iter().take_while(|b| alphanumeric(b)).count();
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let length = rest.iter().take_while(|b| !alphanumeric(b)).count();
        let separator = &rest[..length];
        if !matches!(separator, b"." | b"_" | b"__") && !separator.iter().all(|&b| b == b'-') {
            return false;
        }
        rest = &rest[length..];
    }
}

/// `host [ ":" port ]`, the host a name or a bracketed IPv6 address.
fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            after => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        let address_ok =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !address_ok {
            return false;
        }
        (None, port)
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    let component = |c: &str| {
        let bytes = c.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.is_none_or(|host| host.split('.').all(component))
        && port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    (1..=128).contains(&bytes.len())
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm ":" [0-9a-fA-F]{32,}`.
fn is_digest_syntax(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let bytes = c.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphabetic()
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// go-digest's checks: a known algorithm (sha256, sha384, sha512) with its length of
/// lowercase hex; an algorithm it does not know is unsupported when well formed (lowercase).
fn check_digest(digest: &str) -> Result<(), GrammarError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or(GrammarError::DigestInvalidFormat)?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ if algorithm.bytes().any(|b| b.is_ascii_uppercase()) => {
            return Err(GrammarError::DigestInvalidFormat);
        }
        _ => return Err(GrammarError::DigestUnsupported),
    };
    if hex.len() != length {
        Err(GrammarError::DigestInvalidLength)
    } else if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        Err(GrammarError::DigestInvalidFormat)
    } else {
        Ok(())
    }
}

/// The registry and the rest of a reference (repository, tag, digest), as the distribution
/// library's splitDockerDomain does: a first component with a `.` or a `:`, `localhost`, or
/// capitals is a registry; otherwise the registry is Docker Hub, where a one-component name is
/// an official image under `library/`.
fn split_domain(reference: &str) -> (&str, String) {
    let (registry, rest) = match reference.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => ("docker.io", reference),
    };
    let registry = if registry == "index.docker.io" {
        "docker.io"
    } else {
        registry
    };
    let rest = if registry == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_string()
    };
    (registry, rest)
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
    fn follows_the_reference_grammar() {
        type Parts<'a> = (&'a str, Option<&'a str>, Option<&'a str>);
        fn parts(r: &str) -> Result<Parts<'_>, GrammarError> {
            split_reference(r).map(|p| (p.name, p.tag, p.digest))
        }
        let digest = &format!("@{DIGEST}");
        assert_eq!(parts("a--b__c.d_e"), Ok(("a--b__c.d_e", None, None)));
        assert_eq!(
            parts("my-host.io:5000/a/b:v1.2_rc-3"),
            Ok(("my-host.io:5000/a/b", Some("v1.2_rc-3"), None))
        );
        assert_eq!(parts("x.io/y:T"), Ok(("x.io/y", Some("T"), None)));
        // A `:` with no `/` after it is a tag, even when it reads like a port.
        assert_eq!(parts("host.io:5000"), Ok(("host.io", Some("5000"), None)));
        assert_eq!(
            parts(&format!("Reg.IO/x{digest}")),
            Ok(("Reg.IO/x", None, Some(DIGEST)))
        );
        assert_eq!(
            parts(&format!("a:1{digest}")),
            Ok(("a", Some("1"), Some(DIGEST)))
        );
        assert_eq!(
            parts(&format!("a:{}", "t".repeat(128))).map(|p| p.1.map(str::len)),
            Ok(Some(128))
        );

        let invalid = Err(GrammarError::InvalidFormat);
        for bad in [
            "a__-b",
            "a...b",
            "a___b",
            "-a",
            "a-",
            "a/",
            "/a",
            "a//b",
            "x:",
            "a:-t",
            "a@",
            "a:b:c",
            "a b",
            "é",
            "a:é",
            "-x.io/a",
            "x-.io/a",
            "x.io:/a",
            "x.io:50a/b",
            "a@sha256:abc",
            "a@sha256",
            "a@1sha:0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parts(bad), invalid, "{bad}");
        }
        assert_eq!(parts(&format!("a:{}", "t".repeat(129))), invalid);
        assert_eq!(parts(""), invalid);
        assert_eq!(parts("Busybox"), Err(GrammarError::NameContainsUppercase));
        let hex32 = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parts(&format!("a@sha256:{hex32}")),
            Err(GrammarError::DigestInvalidLength)
        );
        assert_eq!(
            parts(&format!("a@md5:{hex32}")),
            Err(GrammarError::DigestUnsupported)
        );
    }

    /// Over many generated references, the grammar by hand accepts exactly what oci-client's
    /// regular expression accepts, with the same parts after normalisation.
    #[test]
    fn agrees_with_oci_client_on_generated_references() {
        let pieces = [
            "a",
            "b1",
            "z",
            "0",
            "B",
            "-",
            "--",
            ".",
            "_",
            "__",
            "/",
            ":",
            "5000",
            "@",
            "localhost",
            "reg.io",
            "Reg-1.io",
            "index.docker.io",
            "docker.io",
            "v1.0",
            &format!("@{DIGEST}"),
        ];
        // A fixed linear congruential sequence: the same strings every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % bound
        };
        let (mut valid, mut total) = (0, 0);
        for _ in 0..60_000 {
            let reference: String = (0..1 + next(7))
                .map(|_| pieces[next(pieces.len())])
                .collect();
            if is_image_id(&reference) {
                continue;
            }
            total += 1;
            // A first component with capitals is a registry since distribution v0.6 (oci-spec
            // still reads it as a Docker Hub path): both accept such names, with other parts.
            let capital_registry = reference.split_once('/').is_some_and(|(first, _)| {
                first.bytes().any(|b| b.is_ascii_uppercase()) && !first.contains(['.', ':'])
            });
            let ours = ImageReference::parse(&reference).ok();
            if capital_registry {
                let theirs = reference.parse::<oci_client::Reference>().ok();
                assert_eq!(ours.is_some(), theirs.is_some(), "{reference}");
                continue;
            }
            let theirs = reference.parse::<oci_client::Reference>().ok().map(|r| {
                (
                    r.registry().to_string(),
                    r.repository().to_string(),
                    r.tag().map(str::to_string),
                    r.digest().map(str::to_string),
                )
            });
            let ours_parts = ours.as_ref().map(|r| {
                (
                    r.registry().to_string(),
                    r.repository().to_string(),
                    r.tag().map(str::to_string),
                    r.digest().map(str::to_string),
                )
            });
            assert_eq!(ours_parts, theirs, "{reference}");
            valid += usize::from(ours.is_some());
        }
        // The sample holds both kinds in numbers.
        assert!(
            valid > total / 20 && valid < total - total / 20,
            "{valid} of {total} valid"
        );
    }

    #[test]
    fn normalises_and_refuses_as_parse_normalized_named() {
        let parse = |r: &str| ImageReference::parse(r).map(|r| r.to_string());
        // Capitals in the first of several components name a registry.
        assert_eq!(parse("Reg/app").unwrap(), "Reg/app:latest");
        assert_eq!(parse("[::1]:5000/app:1").unwrap(), "[::1]:5000/app:1");
        assert_eq!(parse("[fe80::1]/a/b").unwrap(), "[fe80::1]/a/b:latest");
        let reason = |r: &str| ImageReference::parse(r).unwrap_err().reason;
        assert_eq!(
            reason("Busybox"),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert_eq!(
            reason("x.io/App:v1"),
            "invalid reference format: repository name (App) must be lowercase"
        );
        assert_eq!(reason(""), "invalid reference format");
        assert_eq!(reason("[::1/a"), "invalid reference format");
        // The length counts the repository path, library/ included, not the registry.
        assert!(parse(&"a".repeat(247)).is_ok());
        assert_eq!(
            reason(&"a".repeat(248)),
            "repository name must not be more than 255 characters"
        );
        assert!(parse(&format!("long-registry.example.com/{}", "a".repeat(255))).is_ok());
        let upper = DIGEST.to_ascii_uppercase().replace("SHA256", "sha256");
        assert_eq!(
            reason(&format!("a@{upper}")),
            "invalid checksum digest format"
        );
        let hex = &DIGEST[7..];
        // As upstream, the repository part runs to the first `:`, here through the digest.
        assert_eq!(
            reason(&format!("a@SHA256:{hex}")),
            "invalid reference format: repository name (library/a@SHA256) must be lowercase"
        );
        assert_eq!(
            reason(&format!("a:1@Sha256:{hex}")),
            "invalid checksum digest format"
        );
        assert_eq!(
            reason(&format!("a@md5:{hex}")),
            "unsupported digest algorithm"
        );
        assert_eq!(
            reason(&format!("a@sha256:{hex}0")),
            "invalid checksum digest length"
        );
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
