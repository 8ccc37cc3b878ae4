//! Standard Webhooks v1 signatures: the endpoint's signing secret, the `webhook-signature`
//! header, and the `webhook-id` of a message.
//!
//! A receiver verifies what we send with any Standard Webhooks library, so this module follows
//! the specification to the byte (`{id}.{timestamp}.{body}` signed with HMAC-SHA256, base64,
//! `v1,` prefix, signatures space-separated while secrets rotate). It must never make a secret
//! readable other than through [`Secret::expose`]: no Debug, Display or error message carries
//! one.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The prefix of a serialized symmetric signing secret.
const SECRET_PREFIX: &str = "whsec_";
/// The bytes of a generated secret (the specification allows 24 to 64).
const GENERATED_SECRET_BYTES: usize = 32;
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
/// Bytes of the SHA-256 digest kept in a message id: 128 bits, 32 hex digits.
const MESSAGE_ID_BYTES: usize = 16;

/// Why a text is not a signing secret. Never carries the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("a signing secret starts with whsec_")]
    Prefix,
    #[error("a signing secret is whsec_ followed by standard base64")]
    Base64,
    #[error("a signing secret holds 24 to 64 bytes, not {0}")]
    Length(usize),
}

/// An endpoint's symmetric signing key (HMAC-SHA256), serialized as `whsec_` + base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A new random secret of 32 bytes.
    pub fn generate() -> Secret {
        let bytes: [u8; GENERATED_SECRET_BYTES] = rand::random();
        Secret(bytes.to_vec())
    }

    /// Reads `whsec_` + standard base64 of 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(Secret(bytes))
    }

    /// The `whsec_...` text: shown once, to whoever creates or rotates the endpoint.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Secret::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One `v1,<base64>` signature of a message: HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn signature(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per live secret, space-separated, so that a
/// receiver still holding the previous secret keeps verifying while secrets rotate.
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| signature(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `webhook-id` of the message made of `parts`: `msg_` + 32 hex digits of their SHA-256.
///
/// The same parts always give the same id, so a message sent again (a retry, or a new instance
/// taking the endpoint over) keeps its id and the receiver can drop the duplicate. Each part is
/// hashed with its length first, so `["ab", "c"]` and `["a", "bc"]` differ.
pub fn message_id(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut id = String::from("msg_");
    for byte in &digest[..MESSAGE_ID_BYTES] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the Standard Webhooks reference libraries' signing tests (for example
    /// `TestWebhookSign` in libraries/go/webhook_test.go): a receiver's library accepts what
    /// we send only if this comes out exactly.
    #[test]
    fn signature_matches_the_reference_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn header_carries_one_signature_per_secret_in_order() {
        let old = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = Secret::generate();
        let header = signature_header(&[&new, &old], "msg_1", 1614265330, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&new, "msg_1", 1614265330, b"{}"));
        assert_eq!(parts[1], signature(&old, "msg_1", 1614265330, b"{}"));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(signature_header(&[], "msg_1", 1, b"{}"), "");
    }

    #[test]
    fn signature_covers_id_timestamp_and_body() {
        let secret = Secret::generate();
        let base = signature(&secret, "msg_1", 10, b"{}");
        assert_ne!(base, signature(&secret, "msg_2", 10, b"{}"));
        assert_ne!(base, signature(&secret, "msg_1", 11, b"{}"));
        assert_ne!(base, signature(&secret, "msg_1", 10, b"{ }"));
        assert_ne!(base, signature(&Secret::generate(), "msg_1", 10, b"{}"));
    }

    #[test]
    fn secrets_round_trip_through_their_text_and_serde() {
        let secret = Secret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap(), secret);
        assert_eq!(STANDARD.decode(&text[6..]).unwrap().len(), 32);

        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secret);
        assert_ne!(Secret::generate(), secret);
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        let error = serde_json::from_str::<Secret>("\"whsec_MfKQ9r8GKYqrTwjUPD8IL!!\"")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("MfKQ9r8"), "{error}");
    }

    #[test]
    fn parse_refuses_what_is_not_a_secret() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Prefix)
        );
        assert_eq!(Secret::parse("whsec_not base64!"), Err(SecretError::Base64));
        // 16 bytes: below the specification's minimum.
        assert_eq!(
            Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 16]))),
            Err(SecretError::Length(16))
        );
        assert_eq!(
            Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 65]))),
            Err(SecretError::Length(65))
        );
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 64]))).is_ok());
    }

    #[test]
    fn message_ids_are_stable_and_tell_parts_apart() {
        let id = message_id(&[b"orders", b"acme", b"42"]);
        assert_eq!(id, message_id(&[b"orders", b"acme", b"42"]));
        assert!(id.starts_with("msg_"));
        assert_eq!(id.len(), 4 + 32);
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            !id.contains('.'),
            "a dot would break the signed content's framing"
        );
        assert_ne!(id, message_id(&[b"orders", b"acme", b"43"]));
        assert_ne!(message_id(&[b"ab", b"c"]), message_id(&[b"a", b"bc"]));
        // Pinned (computed independently: SHA-256 over each part's big-endian u64 length and
        // bytes): ids must not change between versions, or receivers see every message anew.
        assert_eq!(id, "msg_68a96bd8b77845941f4adbf3102a36f9");
    }
}
