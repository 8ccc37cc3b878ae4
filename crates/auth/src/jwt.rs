//! JWT bearer tokens, for teams whose callers already hold tokens from an identity provider.
//!
//! [`JwtVerifier::verify`] turns a token into a [`Grant`] or refuses it. The rules:
//!
//! - **Keys and algorithms.** Exactly one key source is configured. With `hs256_secret` (its
//!   UTF-8 bytes, at least 32 of them) only `HS256` is accepted. With `jwks_file` (an RFC 7517
//!   JWKS holding the provider's public keys) only `RS256` and `ES256` are accepted: the key is
//!   the one whose `kid` equals the token header's `kid`, and when the header has no `kid`, the
//!   only key of the JWKS usable for the header's `alg` (none, or several, refuse the token). A
//!   token whose `alg` is not the chosen key's is refused, so a token cannot pick how its
//!   signature is checked: no `none`, no `HS256` keyed with an RSA public key, no RSA key used as
//!   an EC one. A header with `crit` is refused (no extension is understood). Header fields that
//!   point at other keys (`jwk`, `jku`, `x5u`, `x5c`) are never used.
//! - **Which JWKS keys count.** `RSA` keys of at least 2048 bits (RS256) and `EC` keys on P-256
//!   (ES256), whose `alg`, when present, is that algorithm, whose `use`, when present, is `sig`,
//!   and whose `key_ops`, when present, include `verify`. Other keys (encryption keys, symmetric
//!   `oct` keys, other curves and algorithms) are skipped; a JWKS with no usable key, a malformed
//!   usable key, two usable keys with the same `kid` and algorithm, or any private key material
//!   (`d`) is refused when the verifier is built.
//! - **Time.** `exp` is required; `nbf` is checked when present; both allow `leeway_secs` of
//!   clock skew.
//! - **Audience and issuer.** `aud` (a string, or an array of strings) must contain the configured
//!   audience; `iss` must be a string equal to the configured issuer. Both are required.
//! - **Tenant.** The tenant claim (default `tenant`) is required and must be a string that is a
//!   valid [`TenantId`] exactly as written (no trimming, no case folding). A grant never spans
//!   tenants: every scope it holds is on that tenant only.
//! - **Scopes.** The scope claim (default `scope`) is a space-separated string or an array of
//!   strings. `read` and `write` (or `read:*`, `write:*`) cover every dataset of the tenant;
//!   `read:DATASET` and `write:DATASET` one dataset. Every other item (`openid`, `profile`,
//!   `admin`, anything naming a tenant, non-string array items) is ignored: a JWT never grants
//!   `admin`, and a missing scope claim grants nothing.
//! - **Subject.** `jwt:` followed by the `sub` claim, or by the tenant when there is no `sub`.
//!
//! Errors from [`JwtVerifier::verify`] are safe to show the caller: they say which check failed
//! and never repeat a claim's value. Nothing here does I/O except [`JwtVerifier::new`], which reads
//! the JWKS file once; a rotated JWKS needs a new verifier.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tenantsync_core::{DatasetName, TenantId};

use crate::grant::Grant;
use crate::scope::{Access, Datasets, Scope, Tenants};

/// The claim naming the caller's tenant when `tenant_claim` is not set.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";
/// The claim holding the caller's scopes when `scope_claim` is not set.
pub const DEFAULT_SCOPE_CLAIM: &str = "scope";
/// Clock skew allowed on `exp` and `nbf` when `leeway_secs` is not set.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The largest `leeway_secs` accepted: more would keep expired tokens alive for long.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// The shortest `hs256_secret` accepted, in bytes: RFC 7518 section 3.2 requires a key at least
/// as long as the hash output.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// The smallest RSA modulus accepted from the JWKS, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The `[auth.jwt]` table of the configuration file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret. Exactly one of `hs256_secret` and `jwks_file`.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// A JWKS (RFC 7517) JSON file with the identity provider's RS256/ES256 public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `aud`.
    pub audience: String,
    /// Required `iss`.
    pub issuer: String,
    /// The claim that names the caller's tenant (default "tenant").
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim with the caller's scopes (default "scope"): a space-separated string or an array.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Clock skew allowed on exp/nbf, seconds (default 30).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_tenant_claim() -> String {
    DEFAULT_TENANT_CLAIM.to_owned()
}

fn default_scope_claim() -> String {
    DEFAULT_SCOPE_CLAIM.to_owned()
}

fn default_leeway_secs() -> u64 {
    DEFAULT_LEEWAY_SECS
}

/// Never prints the shared secret.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwks_file", &self.jwks_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("tenant_claim", &self.tenant_claim)
            .field("scope_claim", &self.scope_claim)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl JwtConfig {
    /// Checks every field without I/O (the JWKS file is read by [`JwtVerifier::new`]); the error
    /// names the bad field and never repeats the secret.
    pub fn validate(&self) -> Result<(), JwtError> {
        let invalid = |field: &'static str, reason: String| Err(JwtError::Config { field, reason });
        match (&self.hs256_secret, &self.jwks_file) {
            (Some(_), Some(_)) | (None, None) => {
                return invalid(
                    "hs256_secret",
                    "set exactly one of hs256_secret and jwks_file".into(),
                );
            }
            (Some(secret), None) if secret.len() < MIN_HS256_SECRET_BYTES => {
                return invalid(
                    "hs256_secret",
                    format!(
                        "must be at least {MIN_HS256_SECRET_BYTES} bytes long, got {}",
                        secret.len()
                    ),
                );
            }
            (None, Some(path)) if path.as_os_str().is_empty() => {
                return invalid("jwks_file", "must not be empty".into());
            }
            _ => {}
        }
        if self.audience.is_empty() {
            return invalid("audience", "must not be empty".into());
        }
        if self.issuer.is_empty() {
            return invalid("issuer", "must not be empty".into());
        }
        if self.tenant_claim.is_empty() {
            return invalid("tenant_claim", "must not be empty".into());
        }
        if self.scope_claim.is_empty() {
            return invalid("scope_claim", "must not be empty".into());
        }
        if self.scope_claim == self.tenant_claim {
            return invalid(
                "scope_claim",
                format!("must differ from tenant_claim ({:?})", self.tenant_claim),
            );
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return invalid(
                "leeway_secs",
                format!(
                    "must be at most {MAX_LEEWAY_SECS}, got {}",
                    self.leeway_secs
                ),
            );
        }
        Ok(())
    }
}

/// Why a JWT configuration or a token was refused.
///
/// [`JwtVerifier::new`] returns the configuration variants (`Config`, `JwksRead`, `Jwks`), for the
/// operator. [`JwtVerifier::verify`] returns only the others, whose messages are safe to send to
/// the caller: they name the failed check, never a claim's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("invalid auth.jwt.{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("cannot read auth.jwt.jwks_file {path}: {source}")]
    JwksRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid auth.jwt.jwks_file {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },

    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAccepted,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token's key is not known")]
    UnknownKey,
    #[error("the token names no key id and more than one key could have signed it")]
    AmbiguousKey,
    #[error("the token's header has critical extensions, which are not supported")]
    CriticalHeader,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// `claim` is a claim name (`exp`, `aud`, `iss`, or the configured tenant claim).
    #[error("the token has no {claim} claim")]
    MissingClaim { claim: String },
    /// `claim` is a claim name, never its value.
    #[error("the token's {claim} claim is malformed")]
    MalformedClaim { claim: String },
    #[error("the token's {claim} claim is not a valid tenant id")]
    InvalidTenant { claim: String },
    #[error("the token could not be verified")]
    Unverifiable,
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::Audience,
            ErrorKind::InvalidIssuer => JwtError::Issuer,
            // The library names only the spec claims it was asked about (exp, nbf, aud, iss).
            ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim {
                claim: claim.clone(),
            },
            ErrorKind::InvalidClaimFormat(claim) => JwtError::MalformedClaim {
                claim: claim.clone(),
            },
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => JwtError::AlgorithmNotAccepted,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => JwtError::Malformed,
            _ => JwtError::Unverifiable,
        }
    }
}

/// Whether `token` has the shape of a compact JWS: three base64url segments separated by dots,
/// the first two non-empty. The signature may be empty, so that an unsigned (`alg: none`) token
/// is still routed to [`JwtVerifier::verify`] and refused there rather than mistaken for another
/// kind of credential. API tokens (`tsk_...`) never contain a dot.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !payload.is_empty()
        && base64url(header)
        && base64url(payload)
        && base64url(signature)
}

/// Checks JWTs against one configuration; cheap to share between requests (`verify` takes
/// `&self`).
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Keys,
    audience: String,
    issuer: String,
    tenant_claim: String,
    scope_claim: String,
    leeway_secs: u64,
}

#[derive(Debug)]
enum Keys {
    Hs256(DecodingKey),
    Jwks(Vec<JwkKey>),
}

/// One usable public key of the JWKS.
#[derive(Debug)]
struct JwkKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The header fields looked at before the signature is checked, to choose the key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl JwtVerifier {
    /// Validates `config` and reads the JWKS file (if any) once.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtError> {
        config.validate()?;
        let keys = match (&config.hs256_secret, &config.jwks_file) {
            (Some(secret), _) => Keys::Hs256(DecodingKey::from_secret(secret.as_bytes())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| JwtError::JwksRead {
                    path: path.clone(),
                    source,
                })?;
                Keys::Jwks(parse_jwks(path, &text)?)
            }
            // validate() refused a configuration without a key source.
            (None, None) => {
                return Err(JwtError::Config {
                    field: "hs256_secret",
                    reason: "set exactly one of hs256_secret and jwks_file".into(),
                });
            }
        };
        Ok(JwtVerifier {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            tenant_claim: config.tenant_claim.clone(),
            scope_claim: config.scope_claim.clone(),
            leeway_secs: config.leeway_secs,
        })
    }

    /// Checks `token` (without a `Bearer ` prefix) by the rules in the module doc and returns
    /// what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, JwtError> {
        if !looks_like_jwt(token) {
            return Err(JwtError::Malformed);
        }
        let header = read_header(token)?;
        if header.crit.is_some() {
            return Err(JwtError::CriticalHeader);
        }
        let (alg, key) = self.choose_key(&header)?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)?.claims;

        // The library also accepts an array `iss` sharing one member with the configured issuer;
        // RFC 7519 makes `iss` a single string.
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => {
                return Err(JwtError::MissingClaim {
                    claim: self.tenant_claim.clone(),
                });
            }
            Some(Value::String(id)) => {
                TenantId::new(id.as_str()).map_err(|_| JwtError::InvalidTenant {
                    claim: self.tenant_claim.clone(),
                })?
            }
            Some(_) => {
                return Err(JwtError::InvalidTenant {
                    claim: self.tenant_claim.clone(),
                });
            }
        };
        let subject = match claims.get("sub") {
            None | Some(Value::Null) => format!("jwt:{tenant}"),
            // The subject goes to the audit log: refuse text that could forge a log line.
            Some(Value::String(sub)) if !sub.is_empty() && !sub.chars().any(char::is_control) => {
                format!("jwt:{sub}")
            }
            Some(_) => {
                return Err(JwtError::MalformedClaim {
                    claim: "sub".into(),
                });
            }
        };
        let scopes = match claims.get(&self.scope_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(items)) => scopes_for(&tenant, items.split_ascii_whitespace()),
            Some(Value::Array(items)) => {
                scopes_for(&tenant, items.iter().filter_map(Value::as_str))
            }
            Some(_) => {
                return Err(JwtError::MalformedClaim {
                    claim: self.scope_claim.clone(),
                });
            }
        };
        Ok(Grant { subject, scopes })
    }

    /// The key that may have signed a token with `header`, and the one algorithm it is checked
    /// with. The header's `alg` only ever narrows: it must be the configured key's algorithm.
    fn choose_key(&self, header: &RawHeader) -> Result<(Algorithm, &DecodingKey), JwtError> {
        match &self.keys {
            Keys::Hs256(key) => match header.alg.as_str() {
                "HS256" => Ok((Algorithm::HS256, key)),
                _ => Err(JwtError::AlgorithmNotAccepted),
            },
            Keys::Jwks(keys) => {
                let alg = match header.alg.as_str() {
                    "RS256" => Algorithm::RS256,
                    "ES256" => Algorithm::ES256,
                    _ => return Err(JwtError::AlgorithmNotAccepted),
                };
                match &header.kid {
                    Some(kid) => {
                        let named = |k: &&JwkKey| k.kid.as_deref() == Some(kid.as_str());
                        if !keys.iter().any(|k| named(&k)) {
                            return Err(JwtError::UnknownKey);
                        }
                        let key = keys
                            .iter()
                            .filter(named)
                            .find(|k| k.alg == alg)
                            .ok_or(JwtError::AlgorithmMismatch)?;
                        Ok((alg, &key.key))
                    }
                    None => {
                        let mut usable = keys.iter().filter(|k| k.alg == alg);
                        match (usable.next(), usable.next()) {
                            (Some(key), None) => Ok((alg, &key.key)),
                            (None, _) => Err(JwtError::UnknownKey),
                            (Some(_), Some(_)) => Err(JwtError::AmbiguousKey),
                        }
                    }
                }
            }
        }
    }
}

fn read_header(token: &str) -> Result<RawHeader, JwtError> {
    let encoded = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// The scopes the scope claim's `items` grant on `tenant`; unknown items are ignored.
fn scopes_for<'a>(tenant: &TenantId, items: impl Iterator<Item = &'a str>) -> Vec<Scope> {
    let mut seen = HashSet::new();
    let mut scopes = Vec::new();
    for item in items {
        let (access, dataset) = match item.split_once(':') {
            Some((access, dataset)) => (access, Some(dataset)),
            None => (item, None),
        };
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => continue,
        };
        let datasets = match dataset {
            None | Some("*") => Datasets::All,
            // A dataset name has no ':', so `read:DATASET:TENANT` is ignored here: a JWT's tenant
            // comes from the tenant claim only.
            Some(name) => match DatasetName::new(name) {
                Ok(name) => Datasets::One(name),
                Err(_) => continue,
            },
        };
        let scope = Scope::Records {
            access,
            datasets,
            tenants: Tenants::One(tenant.clone()),
        };
        if seen.insert(scope.clone()) {
            scopes.push(scope);
        }
    }
    scopes
}

/// The JWK fields looked at; anything else in a key is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<Value>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

fn parse_jwks(path: &Path, text: &str) -> Result<Vec<JwkKey>, JwtError> {
    let invalid = |reason: String| JwtError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let jwks: RawJwks = serde_json::from_str(text)
        .map_err(|e| invalid(format!("not a JWKS ({{\"keys\": [...]}}): {e}")))?;
    let mut keys: Vec<JwkKey> = Vec::new();
    for (index, value) in jwks.keys.into_iter().enumerate() {
        let jwk: RawJwk = serde_json::from_value(value)
            .map_err(|e| invalid(format!("keys[{index}] is not a JWK: {e}")))?;
        let name = match &jwk.kid {
            Some(kid) => format!("keys[{index}] (kid {kid:?})"),
            None => format!("keys[{index}]"),
        };
        if jwk.d.is_some() {
            return Err(invalid(format!(
                "{name} holds private key material (d); give the public keys only"
            )));
        }
        let Some(key) = usable_key(&jwk).map_err(|reason| invalid(format!("{name} {reason}")))?
        else {
            continue;
        };
        if key.kid.is_some()
            && keys
                .iter()
                .any(|other| other.kid == key.kid && other.alg == key.alg)
        {
            return Err(invalid(format!(
                "{name}: another {:?} key has the same kid",
                key.alg
            )));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(invalid(
            "holds no usable RS256 or ES256 signature key".into(),
        ));
    }
    Ok(keys)
}

/// The key `jwk` provides for RS256 or ES256; `None` for a key meant for something else, and an
/// error for one meant for signatures that cannot be used.
fn usable_key(jwk: &RawJwk) -> Result<Option<JwkKey>, String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|op| op == "verify")
    {
        return Ok(None);
    }
    let fits = |alg: &str| jwk.alg.as_deref().is_none_or(|a| a == alg);
    let decode = |field: &str, value: &Option<String>| {
        let value = value
            .as_deref()
            .ok_or_else(|| format!("has no {field:?}"))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| format!("has a {field:?} that is not base64url without padding"))
    };
    match jwk.kty.as_deref() {
        Some("RSA") if fits("RS256") => {
            let n = decode("n", &jwk.n)?;
            let e = decode("e", &jwk.e)?;
            let n_bits = bit_length(&n);
            if n_bits < MIN_RSA_BITS {
                return Err(format!(
                    "is a {n_bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required"
                ));
            }
            let e_bits = bit_length(&e);
            if !(2..=64).contains(&e_bits) || e.last().is_none_or(|b| b & 1 == 0) {
                return Err("has an RSA exponent that is not an odd number from 3 to 2^64".into());
            }
            Ok(Some(JwkKey {
                kid: jwk.kid.clone(),
                alg: Algorithm::RS256,
                key: DecodingKey::from_rsa_raw_components(&n, &e),
            }))
        }
        Some("EC") if jwk.crv.as_deref() == Some("P-256") && fits("ES256") => {
            let x = decode("x", &jwk.x)?;
            let y = decode("y", &jwk.y)?;
            if x.len() != 32 || y.len() != 32 {
                return Err("has x or y that is not 32 bytes long, as P-256 needs".into());
            }
            let key = DecodingKey::from_ec_components(
                jwk.x.as_deref().unwrap_or_default(),
                jwk.y.as_deref().unwrap_or_default(),
            )
            .map_err(|_| "has x or y that is not base64url".to_owned())?;
            // Building a verifier parses the point; a dummy signature then fails harmlessly.
            // An error (rather than `Ok(false)`) means the point is not on the curve.
            jsonwebtoken::crypto::verify("AA", b"", &key, Algorithm::ES256)
                .map_err(|_| "has x and y that are not a point on P-256".to_owned())?;
            Ok(Some(JwkKey {
                kid: jwk.kid.clone(),
                alg: Algorithm::ES256,
                key,
            }))
        }
        _ => Ok(None),
    }
}

/// The number of significant bits of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        toml::from_str(
            r#"
            hs256_secret = "0123456789abcdef0123456789abcdef"
            audience = "tenantsync"
            issuer = "https://idp.example"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let c = config();
        assert_eq!(c.tenant_claim, DEFAULT_TENANT_CLAIM);
        assert_eq!(c.scope_claim, DEFAULT_SCOPE_CLAIM);
        assert_eq!(c.leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(c.jwks_file, None);
        c.validate().unwrap();

        let err = toml::from_str::<JwtConfig>(
            r#"
            hs256_secret = "0123456789abcdef0123456789abcdef"
            audience = "tenantsync"
            issuer = "https://idp.example"
            algorithms = ["none"]
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("algorithms"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Change = fn(&mut JwtConfig);
        let cases: Vec<(&str, Change)> = vec![
            ("hs256_secret", |c| c.hs256_secret = None),
            ("hs256_secret", |c| c.jwks_file = Some("jwks.json".into())),
            ("hs256_secret", |c| c.hs256_secret = Some("short".into())),
            ("jwks_file", |c| {
                c.hs256_secret = None;
                c.jwks_file = Some(PathBuf::new());
            }),
            ("audience", |c| c.audience.clear()),
            ("issuer", |c| c.issuer.clear()),
            ("tenant_claim", |c| c.tenant_claim.clear()),
            ("scope_claim", |c| c.scope_claim.clear()),
            ("scope_claim", |c| c.scope_claim = "tenant".into()),
            ("leeway_secs", |c| c.leeway_secs = MAX_LEEWAY_SECS + 1),
        ];
        for (field, change) in cases {
            let mut c = config();
            change(&mut c);
            match c.validate() {
                Err(JwtError::Config { field: named, .. }) => assert_eq!(named, field, "{c:?}"),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        let mut jwks = config();
        jwks.hs256_secret = None;
        jwks.jwks_file = Some("jwks.json".into());
        jwks.leeway_secs = MAX_LEEWAY_SECS;
        jwks.validate().unwrap();
    }

    #[test]
    fn the_secret_is_never_printed() {
        let mut c = config();
        c.hs256_secret = Some("a-secret-that-must-not-leak-0123456".into());
        assert!(!format!("{c:?}").contains("must-not-leak"));
        c.hs256_secret = Some("short-secret".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(!err.contains("short-secret"), "{err}");
    }

    #[test]
    fn looks_like_jwt_wants_three_base64url_segments() {
        for yes in ["a.b.c", "eyJh.eyJz.", "A-_z.0-9_.abc-_"] {
            assert!(looks_like_jwt(yes), "{yes:?}");
        }
        for no in [
            "", "tsk_abc", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b+.c", "a.b.c=", "a.b/.c",
            "a b.c.d", "..",
        ] {
            assert!(!looks_like_jwt(no), "{no:?}");
        }
    }

    #[test]
    fn scope_items_map_to_the_tenant_only() {
        let acme = TenantId::new("acme").unwrap();
        let scopes = scopes_for(
            &acme,
            [
                "read",
                "write:inventory",
                "read:*",
                "admin",
                "openid",
                "read:inventory:other",
                "read:Inventory",
                "read:",
                "delete:inventory",
                "read",
            ]
            .into_iter(),
        );
        let printed: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        assert_eq!(printed, ["read:*:acme", "write:inventory:acme"]);
    }

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[1, 0, 1]), 17);
    }
}
