//! Data contracts. A dataset may have a JSON Schema (draft 2020-12) of its records' data, in
//! versions that evolve under a compatibility mode with Confluent Schema Registry's meanings;
//! writes whose data violates the latest version are refused at the edge. A dataset may also
//! ask for Avro: its states are then published a second time, Avro-encoded in the Confluent
//! wire format, with Avro schemas derived from the JSON Schema (or given directly).
//!
//! - [`compat`]: whether one JSON Schema can read what another accepts, and what breaks.
//! - [`validate`]: a compiled JSON Schema that checks data and never fetches anything.
//! - [`avro`]: Avro schemas derived from JSON Schemas, their compatibility, and encoding.
//! - [`registry`]: [`Schemas`], registration under the rules and the cache every write reads.
//!
//! It never decides how a change applies (the master store's business) and never reaches the
//! network: a schema that needs a remote `$ref` is refused.

pub mod avro;
pub mod compat;
mod error;
pub mod registry;
pub mod validate;

pub use compat::{Break, Compatibility};
pub use error::SchemaError;
pub use registry::{AvroVersion, Contract, JsonVersion, RegisterError, Registered, Schemas};
pub use validate::{Validator, Violation};
