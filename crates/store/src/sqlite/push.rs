//! The push concern (placeholder until the backend's tables exist).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::SqliteStore;
use crate::{
    PushAttempt, PushClaim, PushKind, PushProgress, PushPut, PushStore, StoreError, StoredPush,
};

fn unbuilt() -> StoreError {
    StoreError::InvalidArgument("push targets are not stored by this backend yet".into())
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn put_push(
        &self,
        _: PushKind,
        _: &str,
        _: &str,
        _: Option<u64>,
        _: DateTime<Utc>,
    ) -> Result<(PushPut, Option<StoredPush>), StoreError> {
        Err(unbuilt())
    }
    async fn push(&self, _: PushKind, _: &str) -> Result<Option<StoredPush>, StoreError> {
        Err(unbuilt())
    }
    async fn pushes(&self, _: PushKind) -> Result<Vec<StoredPush>, StoreError> {
        Err(unbuilt())
    }
    async fn delete_push(&self, _: PushKind, _: &str) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn claim_push(
        &self,
        _: PushKind,
        _: &str,
        _: &str,
        _: i64,
        _: i64,
    ) -> Result<Option<u64>, StoreError> {
        Err(unbuilt())
    }
    async fn renew_push(
        &self,
        _: PushKind,
        _: &str,
        _: u64,
        _: i64,
        _: i64,
        _: Option<&str>,
    ) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn release_push(&self, _: PushKind, _: &str, _: u64) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn push_claims(&self, _: PushKind) -> Result<Vec<PushClaim>, StoreError> {
        Err(unbuilt())
    }
    async fn push_progress(&self, _: PushKind, _: &str) -> Result<Vec<PushProgress>, StoreError> {
        Err(unbuilt())
    }
    async fn set_push_progress(
        &self,
        _: PushKind,
        _: &str,
        _: u64,
        _: &[PushProgress],
    ) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn replace_push_progress(
        &self,
        _: PushKind,
        _: &str,
        _: &[PushProgress],
    ) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn record_push_attempts(
        &self,
        _: PushKind,
        _: &str,
        _: &[PushAttempt],
        _: usize,
    ) -> Result<(), StoreError> {
        Err(unbuilt())
    }
    async fn push_attempts(
        &self,
        _: PushKind,
        _: &str,
        _: usize,
    ) -> Result<Vec<PushAttempt>, StoreError> {
        Err(unbuilt())
    }
}
