//! A service writing to its outbox: transactions of random size over many tenants, some rolled
//! back, with upserts, patches, deletes and expected versions, tracked in a [`Model`] of what
//! the committed rows imply. It survives its database restarting: a transaction whose COMMIT
//! got no answer is looked up afterwards to learn whether it committed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_postgres::Client;

use super::WorkChange;
use super::model::{Model, next_change};
use super::pg;

pub struct OutboxWriter {
    url: String,
    client: Client,
    rng: StdRng,
    tenants: Vec<String>,
    ids: usize,
    seq: usize,
    /// What the committed rows imply, in commit order.
    pub model: Model,
    pub committed_rows: usize,
    /// Change ids of rows whose transaction rolled back: they must never be applied.
    pub rolled_back: Vec<(String, String)>,
}

/// How a transaction ended.
enum Ended {
    Committed,
    RolledBack,
    /// The connection broke; whether it committed is unknown until looked up.
    Unknown {
        sent_commit: bool,
    },
}

/// A last row for each tenant (`{tenant}-last` upserting record `last`): once every one is
/// applied, everything each tenant committed before it is too, since a tenant's rows are
/// applied in commit order.
pub fn last_rows(tenants: &[String]) -> Vec<WorkChange> {
    tenants
        .iter()
        .map(|t| WorkChange {
            key: format!("{t}-last"),
            op: "upsert",
            tenant: t.clone(),
            id: "last".into(),
            data: serde_json::json!({"done": true}).as_object().cloned(),
            expected_version: None,
        })
        .collect()
}

impl OutboxWriter {
    pub async fn new(url: &str, tenants: Vec<String>, ids: usize, seed: u64) -> Self {
        Self {
            url: url.to_owned(),
            client: pg::connect(url).await,
            rng: StdRng::seed_from_u64(seed),
            tenants,
            ids,
            seq: 0,
            model: Model::default(),
            committed_rows: 0,
            rolled_back: Vec::new(),
        }
    }

    /// One transaction of 1 to `max_rows` rows of random tenants, rolled back with probability
    /// `rollback`. Returns how many rows it committed.
    pub async fn transaction(&mut self, dataset: &str, max_rows: usize, rollback: f64) -> usize {
        let rows = self.rng.random_range(1..=max_rows);
        let roll_back = self.rng.random_bool(rollback);
        let mut model = self.model.clone();
        let mut changes = Vec::with_capacity(rows);
        for _ in 0..rows {
            let tenant = self.tenants[self.rng.random_range(0..self.tenants.len())].clone();
            self.seq += 1;
            let change = next_change(&mut self.rng, &model, &tenant, self.ids, self.seq);
            // Later rows of the transaction see the earlier ones, as the service would.
            model.apply(&change);
            changes.push(change);
        }
        if self.write(dataset, &changes, !roll_back).await {
            self.model = model;
            self.committed_rows += rows;
            rows
        } else {
            self.rolled_back
                .extend(changes.into_iter().map(|c| (c.tenant, c.key)));
            0
        }
    }

    /// Commits `changes` in one transaction, retrying until it is known committed.
    pub async fn commit(&mut self, dataset: &str, changes: &[WorkChange]) {
        while !self.write(dataset, changes, true).await {}
        for change in changes {
            self.model.apply(change);
        }
        self.committed_rows += changes.len();
    }

    /// Writes the rows in one transaction and commits it (or rolls it back); returns whether
    /// it committed, finding out after a broken connection.
    async fn write(&mut self, dataset: &str, changes: &[WorkChange], commit: bool) -> bool {
        match self.attempt(dataset, changes, commit).await {
            Ended::Committed => true,
            Ended::RolledBack => false,
            Ended::Unknown { sent_commit } => {
                self.client = pg::connect(&self.url).await;
                if !sent_commit || !commit {
                    return false;
                }
                let first = &changes[0].key;
                loop {
                    match self
                        .client
                        .query_opt("SELECT 1 FROM outbox WHERE id = $1", &[first])
                        .await
                    {
                        Ok(found) => return found.is_some(),
                        Err(_) => self.client = pg::connect(&self.url).await,
                    }
                }
            }
        }
    }

    async fn attempt(&mut self, dataset: &str, changes: &[WorkChange], commit: bool) -> Ended {
        let broken = Ended::Unknown { sent_commit: false };
        if self.client.batch_execute("BEGIN").await.is_err() {
            return broken;
        }
        for c in changes {
            let payload: Option<Value> = c.data.clone().map(Value::Object);
            let expected = c.expected_version.map(|v| v as i64);
            let inserted = self
                .client
                .execute(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant, expected_version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&c.key, &dataset, &c.id, &c.op, &payload, &c.tenant, &expected],
                )
                .await;
            if inserted.is_err() {
                return broken;
            }
        }
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        match self.client.batch_execute(end).await {
            Ok(()) if commit => Ended::Committed,
            Ok(()) => Ended::RolledBack,
            Err(_) => Ended::Unknown { sent_commit: true },
        }
    }
}
