//! Access control, as pure rules: what a token's scopes allow ([`scope`]) and how tokens are
//! minted and stored ([`token`]). Nothing here does I/O; storing tokens and checking requests
//! are the store's and the API's business.

pub mod scope;
pub mod token;

pub use scope::{Access, InvalidScope, Scope, any_allows};
pub use token::{Minted, TokenHash, hash_presented, mint};
