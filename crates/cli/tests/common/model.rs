//! A reference model of what a workload's changes imply, written independently of the product:
//! the tests compare the master store (and the state log) with it.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use tenantsync_core::Record;

use super::WorkChange;

/// A key's state in the model: its version, and its data (`None` once deleted).
pub type ModelRecord = (u64, Option<Map<String, Value>>);

/// A key's data by version.
pub type History = HashMap<u64, Option<Map<String, Value>>>;

/// The reference model: what the accepted changes imply, per (tenant, id).
#[derive(Default, Clone)]
pub struct Model {
    pub records: HashMap<(String, String), ModelRecord>,
    /// Every state each key passed through, by version: a state log entry must be one of them.
    pub history: HashMap<(String, String), History>,
}

/// RFC 7396, written independently of the product's implementation.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let entry = target.entry(k.clone()).or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                merge(entry.as_object_mut().unwrap(), p);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

impl Model {
    /// Asserts that the master store's records (from `store_records`) are the model's, record
    /// for record: the same keys, each at the model's version with the model's data.
    pub fn assert_stored(&self, stored: &BTreeMap<(String, String), Record>) {
        for (key, r) in stored {
            let (version, data) = self
                .records
                .get(key)
                .unwrap_or_else(|| panic!("{key:?} is in the store but not in the model"));
            assert_eq!((r.version, &r.data), (*version, data), "{key:?}");
        }
        assert_eq!(
            stored.len(),
            self.records.len(),
            "records in the store vs the model"
        );
    }

    pub fn apply(&mut self, c: &WorkChange) {
        let key = (c.tenant.clone(), c.id.clone());
        let current = self.records.get(&key).cloned();
        let live = current
            .as_ref()
            .and_then(|(v, d)| d.as_ref().map(|d| (*v, d.clone())));
        let version = current.as_ref().map_or(0, |(v, _)| *v);
        match c.expected_version {
            Some(0) if live.is_some() => return,
            Some(v) if v > 0 && live.as_ref().map(|(lv, _)| *lv) != Some(v) => return,
            _ => {}
        }
        let new = match c.op {
            "upsert" => Some(c.data.clone().unwrap()),
            "patch" => match &live {
                None => return,
                Some((_, d)) => {
                    let mut d = d.clone();
                    merge(&mut d, c.data.as_ref().unwrap());
                    Some(d)
                }
            },
            _ => {
                if live.is_none() {
                    return;
                }
                None
            }
        };
        if let (Some((_, old)), Some(new)) = (&live, &new)
            && old == new
        {
            return;
        }
        self.history
            .entry(key.clone())
            .or_default()
            .insert(version + 1, new.clone());
        self.records.insert(key, (version + 1, new));
    }
}

/// Generates a tenant's next change from the model's current state of that tenant.
pub fn next_change(
    rng: &mut StdRng,
    model: &Model,
    tenant: &str,
    ids: usize,
    seq: usize,
) -> WorkChange {
    let id = format!("item-{}", rng.random_range(0..ids));
    let live_version = model
        .records
        .get(&(tenant.to_owned(), id.clone()))
        .and_then(|(v, d)| d.as_ref().map(|_| *v));
    let roll = rng.random_range(0..100);
    let op = match roll {
        0..60 => "upsert",
        60..85 => "patch",
        _ => "delete",
    };
    let data = match op {
        "upsert" => Some(
            json!({"n": rng.random_range(0..5), "tag": format!("t{}", rng.random_range(0..3)), "nested": {"a": seq % 7}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        "patch" => Some(
            json!({"n": rng.random_range(0..5), "tag": if rng.random_bool(0.2) { Value::Null } else { json!("p") }, "nested": {"b": seq % 5}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        _ => None,
    };
    let expected_version = match rng.random_range(0..100) {
        0..8 => live_version,                         // a matching If-Match
        8..11 => Some(live_version.unwrap_or(0) + 3), // a stale one: rejected
        11..13 => Some(0),                            // If-None-Match: *
        _ => None,
    };
    WorkChange {
        key: format!("{tenant}-{seq}"),
        op,
        tenant: tenant.to_owned(),
        id,
        data,
        expected_version,
    }
}
