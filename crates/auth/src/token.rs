//! API tokens: 256 random bits, shown once when minted and stored only as a hash.
//!
//! A token is `tsk_` followed by the base64url (no padding) of 32 bytes from the operating
//! system's CSPRNG (through `rand`'s thread generator). Because a token carries that much
//! entropy, a plain SHA-256 is the right hash: there is nothing to guess that a slow password hash
//! would protect, and a lookup by hash costs one index probe.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// What every token starts with, so that one leaked into a log or a repository is recognisable.
pub const PREFIX: &str = "tsk_";
const RANDOM_BYTES: usize = 32;
/// `PREFIX` plus 43 base64url characters.
const LEN: usize = 4 + 43;

/// The stored form of a token: the hex SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A freshly minted token: the secret to show once, and the hash to store.
#[derive(Debug)]
pub struct Minted {
    pub secret: String,
    pub hash: TokenHash,
}

/// Mints a new token.
pub fn mint() -> Minted {
    let bytes: [u8; RANDOM_BYTES] = rand::random();
    let secret = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash(&secret);
    Minted { secret, hash }
}

/// The hash of a presented token, or `None` when it cannot be a token this server minted (so
/// that garbage is refused without a store lookup).
pub fn hash_presented(presented: &str) -> Option<TokenHash> {
    let body = presented.strip_prefix(PREFIX)?;
    let well_formed = presented.len() == LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| hash(presented))
}

fn hash(secret: &str) -> TokenHash {
    let digest = Sha256::digest(secret.as_bytes());
    TokenHash(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_distinct_well_formed_and_match_their_hash() {
        let a = mint();
        let b = mint();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.hash, b.hash);
        assert!(a.secret.starts_with(PREFIX));
        assert_eq!(a.secret.len(), LEN);
        assert_eq!(hash_presented(&a.secret), Some(a.hash.clone()));
        assert_eq!(a.hash.as_str().len(), 64);
        assert!(!a.hash.as_str().contains(&a.secret[PREFIX.len()..]));
    }

    #[test]
    fn garbage_is_not_hashed() {
        let good = mint().secret;
        for bad in [
            "",
            "tsk_",
            "Bearer x",
            &good[..good.len() - 1],
            &format!("{good}x"),
            &good.replacen(PREFIX, "tsx_", 1),
            &format!("{}!{}", &good[..10], &good[11..]),
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        // echo -n tsk_example | sha256sum
        assert_eq!(
            hash("tsk_example").as_str(),
            "20746b998d2b7f3bd2e44ad4c3a6206dd64aaf9df985c34d65f7959374965ab6"
        );
    }
}
