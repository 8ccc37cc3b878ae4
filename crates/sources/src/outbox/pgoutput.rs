//! The `pgoutput` logical decoding messages (protocol version 1) that the replication stream
//! carries, one per row, and the assembly of those rows into whole committed transactions of
//! inserted rows.
//!
//! Pure: no I/O, no clock. It must never guess: a message it does not know, a truncated one,
//! or an insert into a relation it has not been described is an error, not a skipped row,
//! because a skipped row is a lost change. Messages that can legitimately pass by (types,
//! origins, updates, deletes and truncates, which an insert-only publication does not send but
//! an altered one could) are recognised and ignored.
//!
//! Format: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A WAL position, shown as PostgreSQL shows it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = DecodeError;

    fn from_str(text: &str) -> Result<Self, DecodeError> {
        let bad = || DecodeError::Lsn(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("pgoutput message {tag:?} ends early")]
    Truncated { tag: char },
    #[error("pgoutput message {tag:?} has {extra} bytes past its end")]
    Trailing { tag: char, extra: usize },
    #[error("unknown pgoutput message {0:?}")]
    UnknownTag(char),
    #[error("unknown tuple value kind {0:?}")]
    UnknownValueKind(char),
    #[error("a name or value in pgoutput message {tag:?} is not UTF-8")]
    NotUtf8 { tag: char },
    #[error("{0:?} is not an LSN")]
    Lsn(String),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        /// Where the transaction's commit record is.
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        /// The end of the commit record: the slot must be advanced to here to skip the
        /// transaction (logical decoding skips commits that start before the confirmed LSN).
        end_lsn: Lsn,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        values: Vec<Value>,
    },
    /// A message that needs no action: Type, Origin, Update, Delete, Truncate, a logical
    /// decoding message.
    Ignored(char),
}

/// What a Relation message says: the columns of a table, in the order tuples give them. Sent
/// before the first change of the table in each decoding session, and again after its schema
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// One column value of a tuple, in text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value, not sent; never part of an insert.
    Unchanged,
    Text(String),
}

struct Reader<'a> {
    tag: char,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated { tag: self.tag });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String, DecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8 { tag: self.tag })
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { tag: self.tag })?;
        let text = self.utf8(&self.bytes[..end])?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                tag: self.tag,
                extra: self.bytes.len(),
            })
        }
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let tag = char::from(tag);
    let mut r = Reader { tag, bytes: body };
    let message = match tag {
        'B' => Message::Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: r.u64()? as i64,
            xid: r.u32()?,
        },
        'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: r.u64()? as i64,
            }
        }
        'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(DecodeError::Truncated { tag });
            }
            let count = r.u16()?;
            let mut values = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                values.push(match r.u8()? {
                    b'n' => Value::Null,
                    b'u' => Value::Unchanged,
                    b't' => {
                        let len = r.u32()? as usize;
                        let bytes = r.take(len)?;
                        Value::Text(r.utf8(bytes)?)
                    }
                    other => return Err(DecodeError::UnknownValueKind(char::from(other))),
                });
            }
            Message::Insert { relation, values }
        }
        // Type, Origin, Update, Delete, Truncate, logical decoding Message: their bodies are
        // not needed, so they are not checked either.
        'Y' | 'O' | 'U' | 'D' | 'T' | 'M' => return Ok(Message::Ignored(tag)),
        other => return Err(DecodeError::UnknownTag(other)),
    };
    r.end()?;
    Ok(message)
}

/// One committed transaction's rows of the outbox table, in insertion order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    pub rows: Vec<Row>,
}

/// An inserted row: its values by column name.
pub type Row = HashMap<String, Value>;

/// A message sequence that breaks the protocol's order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("pgoutput {0:?} outside a transaction")]
    OutsideTransaction(char),
    #[error("pgoutput Begin inside a transaction")]
    NestedBegin,
    #[error("an insert into relation {0} that no Relation message described")]
    UnknownRelation(u32),
    #[error("the read ended inside a transaction")]
    Unfinished,
    #[error("an insert into relation {relation} has {got} values for {expected} columns")]
    ColumnCount {
        relation: u32,
        got: usize,
        expected: usize,
    },
}

/// Turns messages into [`Transaction`]s of one table. Relations are remembered for the life
/// of the assembler: PostgreSQL describes a relation once per decoding session (one replication
/// connection, or one SQL peek), so an assembler should live at least as long as one session
/// (a longer life is harmless: a schema change comes with a new Relation message).
#[derive(Debug)]
pub struct Assembler {
    namespace: String,
    table: String,
    relations: HashMap<u32, Relation>,
    open: Option<Transaction>,
}

impl Assembler {
    pub fn new(namespace: &str, table: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            table: table.to_owned(),
            relations: HashMap::new(),
            open: None,
        }
    }

    /// Feeds one message; returns the transaction it completes, if any. A transaction with no
    /// row of the table is returned too (its end LSN is progress).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Transaction>, StreamError> {
        self.push_message(decode(bytes)?)
    }

    /// [`Assembler::push`] for a message already decoded (the replication client decodes
    /// Begin and Commit itself).
    pub fn push_message(&mut self, message: Message) -> Result<Option<Transaction>, StreamError> {
        match message {
            Message::Begin {
                commit_time, xid, ..
            } => {
                if self.open.is_some() {
                    return Err(StreamError::NestedBegin);
                }
                self.open = Some(Transaction {
                    xid,
                    commit_lsn: Lsn(0),
                    end_lsn: Lsn(0),
                    commit_time,
                    rows: Vec::new(),
                });
                Ok(None)
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let mut tx = self
                    .open
                    .take()
                    .ok_or(StreamError::OutsideTransaction('C'))?;
                tx.commit_lsn = commit_lsn;
                tx.end_lsn = end_lsn;
                tx.commit_time = commit_time;
                Ok(Some(tx))
            }
            Message::Relation(relation) => {
                self.relations.insert(relation.id, relation);
                Ok(None)
            }
            Message::Insert { relation, values } => {
                let tx = self
                    .open
                    .as_mut()
                    .ok_or(StreamError::OutsideTransaction('I'))?;
                let described = self
                    .relations
                    .get(&relation)
                    .ok_or(StreamError::UnknownRelation(relation))?;
                if described.namespace != self.namespace || described.name != self.table {
                    // Another table added to the publication by hand: not ours to relay.
                    return Ok(None);
                }
                if described.columns.len() != values.len() {
                    return Err(StreamError::ColumnCount {
                        relation,
                        got: values.len(),
                        expected: described.columns.len(),
                    });
                }
                tx.rows
                    .push(described.columns.iter().cloned().zip(values).collect());
                Ok(None)
            }
            Message::Ignored(_) => Ok(None),
        }
    }

    /// Whether a transaction was begun and not committed (the read stopped inside it).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured from PostgreSQL 15.20 (`pg_logical_slot_peek_binary_changes(slot, NULL, NULL,
    // 'proto_version', '1', 'publication_names', pub)`) for a Debezium-style outbox table
    // `(id uuid, aggregatetype text, aggregateid text, type text, payload jsonb, tenant text,
    // expected_version bigint)`: one transaction inserting two rows (the second a delete with
    // expected version 3 and a null payload), then one inserting a patch with a non-ASCII
    // payload. A rolled-back insert, an update and a delete between them left no message.
    const FIRST: [&str; 5] = [
        "420000000053b59cd0000304fc4c37825e000149ae",
        "52000420017075626c6963006f7574626f78006400070169640000000b86ffffffff00616767726567617465747970650000000019ffffffff0061676772656761746569640000000019ffffffff00747970650000000019ffffffff007061796c6f61640000000edaffffffff0074656e616e740000000019ffffffff0065787065637465645f76657273696f6e0000000014ffffffff",
        "49000420014e0007740000002431313131313131312d313131312d313131312d313131312d31313131313131313131313174000000056974656d7374000000027231740000000675707365727474000000087b2261223a20317d740000000274316e",
        "49000420014e0007740000002432323232323232322d323232322d323232322d323232322d32323232323232323232323274000000056974656d7374000000027231740000000664656c6574656e74000000027431740000000133",
        "43000000000053b59cd00000000053b59d00000304fc4c37825e",
    ];
    const SECOND: [&str; 3] = [
        "420000000053b59f08000304fc4c37a78f000149b1",
        "49000420014e0007740000002434343434343434342d343434342d343434342d343434342d34343434343434343434343474000000056974656d737400000002723374000000057061746368740000000b7b2262223a2022c3a9227d740000000274336e",
        "43000000000053b59f080000000053b59f38000304fc4c37a78f",
    ];
    // After `CREATE TYPE mood AS ENUM (...)` and `ALTER TABLE outbox ADD COLUMN m mood`: a Type
    // message, then the Relation again with the new column, then the insert.
    const ALTERED: [&str; 5] = [
        "420000000053fa83b8000304fc50b47cd7000149b7",
        "59000420157075626c6963006d6f6f6400",
        "52000420017075626c6963006f7574626f78006400080169640000000b86ffffffff00616767726567617465747970650000000019ffffffff0061676772656761746569640000000019ffffffff00747970650000000019ffffffff007061796c6f61640000000edaffffffff0074656e616e740000000019ffffffff0065787065637465645f76657273696f6e0000000014ffffffff006d0000042015ffffffff",
        "49000420014e0008740000002435353535353535352d353535352d353535352d353535352d35353535353535353535353574000000056974656d7374000000027235740000000675707365727474000000027b7d740000000274356e74000000026f6b",
        "43000000000053fa83b80000000053fa83e8000304fc50b47cd7",
    ];

    fn text(row: &Row, column: &str) -> Option<String> {
        match &row[column] {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }

    #[test]
    fn captured_messages_decode() {
        assert_eq!(
            decode(&hex(FIRST[0])).unwrap(),
            Message::Begin {
                final_lsn: "0/53B59CD0".parse().unwrap(),
                commit_time: 0x0003_04fc_4c37_825e,
                xid: 84398,
            }
        );
        let Message::Relation(relation) = decode(&hex(FIRST[1])).unwrap() else {
            panic!("a relation")
        };
        assert_eq!(
            (relation.namespace.as_str(), relation.name.as_str()),
            ("public", "outbox")
        );
        assert_eq!(
            relation.columns,
            [
                "id",
                "aggregatetype",
                "aggregateid",
                "type",
                "payload",
                "tenant",
                "expected_version"
            ]
        );
        assert_eq!(
            decode(&hex(FIRST[4])).unwrap(),
            Message::Commit {
                commit_lsn: "0/53B59CD0".parse().unwrap(),
                end_lsn: "0/53B59D00".parse().unwrap(),
                commit_time: 0x0003_04fc_4c37_825e,
            }
        );
        assert_eq!(decode(&hex(ALTERED[1])).unwrap(), Message::Ignored('Y'));
    }

    #[test]
    fn transactions_assemble_with_rows_in_insertion_order() {
        let mut a = Assembler::new("public", "outbox");
        let mut done = Vec::new();
        for m in FIRST.iter().chain(&SECOND) {
            done.extend(a.push(&hex(m)).unwrap());
        }
        assert!(!a.in_transaction());
        assert_eq!(done.len(), 2);
        let first = &done[0];
        assert_eq!(first.xid, 84398);
        assert_eq!(first.end_lsn.to_string(), "0/53B59D00");
        assert_eq!(first.rows.len(), 2);
        assert_eq!(
            text(&first.rows[0], "id").unwrap(),
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(text(&first.rows[0], "payload").unwrap(), r#"{"a": 1}"#);
        assert_eq!(first.rows[0]["expected_version"], Value::Null);
        assert_eq!(text(&first.rows[1], "type").unwrap(), "delete");
        assert_eq!(first.rows[1]["payload"], Value::Null);
        assert_eq!(text(&first.rows[1], "expected_version").unwrap(), "3");
        // The second transaction's Relation came with the first, in the same session.
        assert_eq!(text(&done[1].rows[0], "payload").unwrap(), r#"{"b": "é"}"#);
        assert!(done[0].end_lsn < done[1].commit_lsn);
    }

    #[test]
    fn a_changed_relation_is_read_by_its_new_columns() {
        let mut a = Assembler::new("public", "outbox");
        let tx = ALTERED
            .iter()
            .find_map(|m| a.push(&hex(m)).unwrap())
            .unwrap();
        assert_eq!(text(&tx.rows[0], "m").unwrap(), "ok");
        assert_eq!(text(&tx.rows[0], "tenant").unwrap(), "t5");
    }

    #[test]
    fn an_insert_without_its_relation_is_an_error_not_a_skip() {
        let mut a = Assembler::new("public", "outbox");
        a.push(&hex(SECOND[0])).unwrap();
        assert_eq!(
            a.push(&hex(SECOND[1])),
            Err(StreamError::UnknownRelation(0x0004_2001))
        );
    }

    #[test]
    fn another_tables_rows_are_not_relayed() {
        let mut a = Assembler::new("public", "other");
        let tx = FIRST.iter().find_map(|m| a.push(&hex(m)).unwrap()).unwrap();
        assert!(tx.rows.is_empty());
        assert_eq!(tx.end_lsn.to_string(), "0/53B59D00");
    }

    #[test]
    fn damaged_messages_are_refused() {
        for m in FIRST.iter().chain(&SECOND).chain(&ALTERED) {
            let bytes = hex(m);
            if matches!(decode(&bytes), Ok(Message::Ignored(_))) {
                continue;
            }
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{m} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_err(), "{m} with a trailing byte");
        }
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag('Z')));
        let mut unchanged = hex(SECOND[1]);
        let at = unchanged.len() - 1;
        unchanged[at] = b'x';
        assert_eq!(decode(&unchanged), Err(DecodeError::UnknownValueKind('x')));
    }

    #[test]
    fn lsns_round_trip_as_postgres_shows_them() {
        for text in ["0/0", "0/53B59D00", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("0/G".parse::<Lsn>().is_err());
    }
}
