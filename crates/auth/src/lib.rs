//! Access control, as pure rules: what a token's scopes allow ([`scope`]), what an authenticated
//! caller may do ([`grant`]), how API tokens are minted and stored ([`token`]) and how JWTs from an
//! identity provider are checked ([`jwt`]). Nothing here does I/O except reading the JWKS file
//! once when a [`JwtVerifier`] is built; storing tokens and checking requests are the store's and
//! the API's business.

pub mod grant;
pub mod jwt;
pub mod scope;
pub mod token;

pub use grant::Grant;
pub use jwt::{JwtConfig, JwtError, JwtVerifier, looks_like_jwt};
pub use scope::{Access, InvalidScope, Scope, any_allows};
pub use token::{Minted, TokenHash, hash_presented, mint};
