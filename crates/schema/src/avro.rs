//! Avro: schemas derived from JSON Schemas, their compatibility, and the encoding of a record's
//! data in the Confluent wire format.
//!
//! STUB: the Avro engineer replaces this file.

use serde_json::Value;
use tenantsync_core::Object;

use crate::{Break, SchemaError};

/// A parsed Avro schema of a record's data.
#[derive(Debug)]
pub struct AvroSchema {}

/// Why data could not be encoded with a schema.
#[derive(Debug, thiserror::Error)]
#[error("data does not fit the Avro schema at '{pointer}': {message}")]
pub struct EncodeError {
    pub pointer: String,
    pub message: String,
}

impl AvroSchema {
    /// Derives an Avro record schema named `name` from a JSON Schema; refuses (pointing into the
    /// JSON Schema) what has no Avro equivalent.
    pub fn derive(json_schema: &Value, name: &str) -> Result<Self, SchemaError> {
        let _ = (json_schema, name);
        unimplemented!()
    }

    /// Parses an Avro schema given directly (it must be a record).
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let _ = text;
        unimplemented!()
    }

    /// The schema's canonical JSON text, as registered and served.
    pub fn text(&self) -> &str {
        unimplemented!()
    }

    /// What breaks if a reader with `reader` reads data written with `writer` (Avro's schema
    /// resolution rules). Empty: it can.
    pub fn can_read(reader: &AvroSchema, writer: &AvroSchema, writer_version: u32) -> Vec<Break> {
        let _ = (reader, writer, writer_version);
        unimplemented!()
    }

    /// Encodes `data` in the Confluent wire format: byte 0, the 4-byte big-endian `schema_id`,
    /// then the Avro binary encoding.
    pub fn encode(&self, schema_id: u32, data: &Object) -> Result<Vec<u8>, EncodeError> {
        let _ = (schema_id, data);
        unimplemented!()
    }
}
