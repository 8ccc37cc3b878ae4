//! Consumer groups of the embedded log: in-memory membership over durable committed offsets.
//!
//! The members of a group on a topic live in this process (the data dir's lock makes it the only
//! one). Partition `p` belongs to member `members[p % members.len()]`, recomputed whenever a
//! member joins or leaves. Every change of a partition's owner bumps that partition's *epoch*; a
//! member remembers the epoch at which it took each partition, so it notices a partition that
//! went away and came back, restarts it at the committed offset, and cannot commit for an
//! ownership it lost. This module must never hand one partition to two members at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tenantsync_log::{Entry, GroupConsumer, LogError, Offset, Output, Partition, Publisher};
use tokio::sync::watch;

use crate::writer::{Command, GroupCommit};
use crate::{Shared, TopicHandle, deadline_after};

/// Groups by (group, topic name).
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<(String, String), Arc<GroupState>>>,
}

struct GroupState {
    inner: Mutex<Membership>,
    /// Bumped on every rebalance, to wake members waiting in `poll`.
    generation: watch::Sender<u64>,
}

struct Membership {
    /// Member ids in join order.
    members: Vec<u64>,
    next_member: u64,
    owner: Vec<Option<u64>>,
    epoch: Vec<u64>,
    /// The group's committed offsets; authoritative while the group is in memory (every commit
    /// goes through here before it is written).
    committed: Vec<Option<Offset>>,
}

impl Membership {
    fn rebalance(&mut self) {
        for p in 0..self.owner.len() {
            let owner = if self.members.is_empty() {
                None
            } else {
                Some(self.members[p % self.members.len()])
            };
            if self.owner[p] != owner {
                self.owner[p] = owner;
                self.epoch[p] += 1;
            }
        }
    }
}

impl GroupState {
    fn lock(&self) -> MutexGuard<'_, Membership> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Under the group's lock: checks that `member` owns every partition of `offsets` at the
    /// epoch `epoch_of` gives, makes them the group's committed offsets and calls `queue`, which
    /// queues their write. Holding the lock through `queue` keeps commits of one partition in the
    /// order the group accepted them. Returns the offsets replaced, in the order of `offsets`.
    fn commit_owned(
        &self,
        topic: &TopicHandle,
        member: u64,
        offsets: &[(Partition, Offset)],
        epoch_of: impl Fn(Partition) -> Option<u64>,
        queue: impl FnOnce(),
    ) -> Result<Vec<Option<Offset>>, LogError> {
        let mut m = self.lock();
        for (p, _) in offsets {
            let i = *p as usize;
            if m.owner[i] != Some(member) || Some(m.epoch[i]) != epoch_of(*p) {
                return Err(LogError::NotOwner {
                    topic: topic.name.clone(),
                    partition: *p,
                });
            }
        }
        let replaced = offsets
            .iter()
            .map(|(p, o)| m.committed[*p as usize].replace(*o))
            .collect();
        queue();
        Ok(replaced)
    }
}

/// A partition a member owns: the epoch it took it at and the next offset to deliver.
#[derive(Debug, Clone, Copy)]
struct Owned {
    epoch: u64,
    position: Offset,
}

/// One member of a group; leaves the group when dropped.
pub(crate) struct Member {
    shared: Arc<Shared>,
    topic: Arc<TopicHandle>,
    group: String,
    state: Arc<GroupState>,
    id: u64,
    owned: BTreeMap<Partition, Owned>,
    /// Rotates the partition a poll starts with, so one busy partition cannot starve others.
    cursor: usize,
}

/// Joins `group` on `topic`.
pub(crate) async fn join(
    shared: Arc<Shared>,
    group: &str,
    topic: Arc<TopicHandle>,
) -> Result<Member, LogError> {
    let key = (group.to_string(), topic.name.clone());
    let mut loaded: Option<Vec<Option<Offset>>> = None;
    loop {
        {
            let mut map = shared.groups.map.lock().unwrap_or_else(|e| e.into_inner());
            let state = match (map.get(&key), loaded.take()) {
                (Some(state), _) => Some(state.clone()),
                (None, Some(committed)) => {
                    let n = topic.partitions as usize;
                    let state = Arc::new(GroupState {
                        inner: Mutex::new(Membership {
                            members: Vec::new(),
                            next_member: 0,
                            owner: vec![None; n],
                            epoch: vec![0; n],
                            committed,
                        }),
                        generation: watch::Sender::new(0),
                    });
                    map.insert(key.clone(), state.clone());
                    Some(state)
                }
                (None, None) => None,
            };
            // Joining under the map's lock: a group cannot be dropped from the map while a
            // member is joining it.
            if let Some(state) = state {
                let id = {
                    let mut m = state.lock();
                    let id = m.next_member;
                    m.next_member += 1;
                    m.members.push(id);
                    m.rebalance();
                    id
                };
                state.generation.send_modify(|g| *g += 1);
                drop(map);
                let mut member = Member {
                    shared: shared.clone(),
                    topic,
                    group: group.to_string(),
                    state,
                    id,
                    owned: BTreeMap::new(),
                    cursor: 0,
                };
                member.sync();
                return Ok(member);
            }
        }
        // First member of the group in this process: load its committed offsets, then retry.
        loaded = Some(
            shared
                .readers
                .committed_all(group.to_string(), topic.clone())
                .await?,
        );
    }
}

impl Member {
    /// Brings `owned` in line with the group: drops partitions taken away, starts newly owned
    /// (or re-owned) ones at the committed offset.
    fn sync(&mut self) {
        let m = self.state.lock();
        self.owned.retain(|p, o| {
            let p = *p as usize;
            m.owner[p] == Some(self.id) && m.epoch[p] == o.epoch
        });
        for p in 0..m.owner.len() {
            if m.owner[p] == Some(self.id) {
                self.owned.entry(p as Partition).or_insert(Owned {
                    epoch: m.epoch[p],
                    position: m.committed[p].unwrap_or(0),
                });
            }
        }
    }

    /// Whether this member still owns `partition` at the epoch it took it at.
    fn still_owns(&self, m: &Membership, partition: Partition) -> bool {
        let p = partition as usize;
        self.owned
            .get(&partition)
            .is_some_and(|o| m.owner[p] == Some(self.id) && m.epoch[p] == o.epoch)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let key = (self.group.clone(), self.topic.name.clone());
        let mut map = self
            .shared
            .groups
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let empty = {
            let mut m = self.state.lock();
            m.members.retain(|id| *id != self.id);
            m.rebalance();
            m.members.is_empty()
        };
        self.state.generation.send_modify(|g| *g += 1);
        if empty {
            // Only if the map still holds this very state.
            if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &self.state)) {
                map.remove(&key);
            }
        }
    }
}

#[async_trait]
impl GroupConsumer for Member {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Entry>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_after(wait);
        loop {
            // Subscribed before looking, so a change made while we look wakes the wait below.
            let mut generation = self.state.generation.subscribe();
            generation.borrow_and_update();
            let mut appended = self.topic.appended.subscribe();
            appended.borrow_and_update();
            self.sync();

            let owned: Vec<(Partition, Owned)> = self.owned.iter().map(|(p, o)| (*p, *o)).collect();
            let mut reads = Vec::new();
            let mut ends = HashMap::new();
            if !owned.is_empty() {
                let start = self.cursor % owned.len();
                for (p, o) in owned[start..].iter().chain(&owned[..start]) {
                    let end = self.topic.end(*p);
                    if o.position < end {
                        reads.push((*p, o.position));
                        ends.insert(*p, end);
                    }
                }
            }
            if !reads.is_empty() {
                self.cursor = self.cursor.wrapping_add(1);
                let results = self
                    .shared
                    .readers
                    .read_many(self.topic.clone(), reads, max)
                    .await?;
                let m = self.state.lock();
                let mut out = Vec::new();
                for (p, from, asked, entries) in results {
                    // A partition lost during the read is not delivered (its new owner will).
                    if !self.still_owns(&m, p) {
                        continue;
                    }
                    // Fewer than asked: everything from `from` up to the end was read, so the
                    // position may skip to the end over what compaction removed.
                    let next = match entries.last() {
                        Some(last) if entries.len() < asked => (last.offset + 1).max(ends[&p]),
                        Some(last) => last.offset + 1,
                        None => ends[&p].max(from),
                    };
                    if let Some(o) = self.owned.get_mut(&p) {
                        o.position = next;
                    }
                    out.extend(entries);
                }
                drop(m);
                if !out.is_empty() {
                    return Ok(out);
                }
                // Only compaction gaps: look again (positions moved on).
                continue;
            }
            tokio::select! {
                _ = generation.changed() => {}
                _ = appended.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        for (p, _) in offsets {
            self.topic.check_partition(*p)?;
        }
        // The queue slot is taken first so that checking ownership, updating the in-memory
        // offsets and queueing the write happen under one lock: commits of one partition reach
        // the database in the order the group accepted them.
        let permit = self
            .shared
            .writer
            .reserve()
            .await
            .map_err(|_| LogError::Closed)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.state.commit_owned(
            &self.topic,
            self.id,
            offsets,
            |p| self.owned.get(&p).map(|o| o.epoch),
            || {
                permit.send(Command::Commit {
                    group: self.group.clone(),
                    topic_id: self.topic.id,
                    offsets: offsets.to_vec(),
                    reply: tx,
                })
            },
        )?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    fn assignment(&self) -> Vec<Partition> {
        let m = self.state.lock();
        (0..m.owner.len())
            .filter(|p| m.owner[*p] == Some(self.id))
            .map(|p| p as Partition)
            .collect()
    }

    fn publisher(&self) -> Box<dyn Publisher> {
        Box::new(MemberPublisher {
            shared: self.shared.clone(),
            input: self.topic.clone(),
            group: self.group.clone(),
            state: self.state.clone(),
            id: self.id,
            bound: self.owned.iter().map(|(p, o)| (*p, o.epoch)).collect(),
        })
    }
}

/// A member's publisher: the entries of every topic and the offsets go to the writer as one
/// command, so they commit in one SQLite transaction.
struct MemberPublisher {
    shared: Arc<Shared>,
    input: Arc<TopicHandle>,
    group: String,
    state: Arc<GroupState>,
    id: u64,
    /// The epoch at which the member owned each partition when the publisher was made.
    bound: BTreeMap<Partition, u64>,
}

#[async_trait]
impl Publisher for MemberPublisher {
    async fn publish(
        &self,
        outputs: Vec<Output>,
        offsets: Vec<(Partition, Offset)>,
    ) -> Result<(), LogError> {
        let mut resolved = Vec::with_capacity(outputs.len());
        for Output { topic, messages } in outputs {
            let handle = self.shared.topic(&topic)?;
            for m in &messages {
                handle.check_partition(m.partition)?;
            }
            resolved.push((handle, messages));
        }
        for (p, _) in &offsets {
            self.input.check_partition(*p)?;
        }
        // As in `commit`: the queue slot first, then the ownership check, the in-memory offsets
        // and the queued write under the group's lock.
        let permit = self
            .shared
            .writer
            .reserve()
            .await
            .map_err(|_| LogError::Closed)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = self.state.commit_owned(
            &self.input,
            self.id,
            &offsets,
            |p| self.bound.get(&p).copied(),
            || {
                permit.send(Command::Append {
                    outputs: resolved,
                    commit: (!offsets.is_empty()).then(|| GroupCommit {
                        group: self.group.clone(),
                        topic_id: self.input.id,
                        offsets: offsets.clone(),
                    }),
                    reply: tx,
                })
            },
        )?;
        let result = rx.await.map_err(|_| LogError::Closed).and_then(|r| r);
        if result.is_err() {
            // Nothing was written: the group's offsets are what they were, unless a later
            // commit moved them meanwhile.
            let mut m = self.state.lock();
            for (was, (p, set)) in previous.iter().zip(&offsets) {
                if m.committed[*p as usize] == Some(*set) {
                    m.committed[*p as usize] = *was;
                }
            }
        }
        result.map(|_| ())
    }
}
