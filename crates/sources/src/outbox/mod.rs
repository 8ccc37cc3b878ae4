//! The `postgres-outbox` kind (being written).

use crate::runner::ShardContext;
use crate::{CheckError, Outbox, SourceError, SourceName};

pub async fn prepare(_outbox: &Outbox, _source: &SourceName) -> Result<(), CheckError> {
    Err(CheckError("outbox sources are not built yet".into()))
}

pub async fn run(_outbox: &Outbox, ctx: &ShardContext) -> Result<(), SourceError> {
    ctx.stop.cancelled().await;
    Ok(())
}

pub async fn drop_replication(_outbox: &Outbox, _source: &SourceName) -> Result<(), SourceError> {
    Ok(())
}
