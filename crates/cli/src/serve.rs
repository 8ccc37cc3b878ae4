//! `tenantsync serve`: opens the log and the store, declares configured datasets, then runs the
//! processor, the batcher and the HTTP API until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tenantsync_api::{ApiConfig, ApiMetrics, AppState, Auth, Erasures, WriteQuotas, erasure};
use tenantsync_auth::JwtVerifier;
use tenantsync_batcher::{BatchQueue, BatcherStage, StageConfig};
use tenantsync_core::Topics;
use tenantsync_dataset::Datasets;
use tenantsync_feed::{CursorKey, Hub, retention};
use tenantsync_processor::{Processor, ProcessorConfig};
use tenantsync_store::{AccessStore, Dataset};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backends::{open_log, open_store, redact};
use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    raise_fd_limit();
    let running = start(&settings).await?;
    info!(log = %redact(&settings.log), store = %redact(&settings.store), "tenantsync started");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("tenantsync listening on http://{}", running.addr);
    wait_for_signal().await;
    info!("shutting down");
    running.stop().await?;
    info!("stopped");
    Ok(())
}

/// A started instance: the API listening, the processor running.
pub struct Running {
    pub addr: SocketAddr,
    pub processor: Arc<Processor>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    processing: JoinHandle<()>,
    batching: JoinHandle<()>,
}

impl Running {
    /// Stops accepting requests, lets in-flight ones finish, then stops the processor after its
    /// current batch and the batcher after a last checkpoint.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .context("the HTTP server task panicked")?
            .context("the HTTP server failed")?;
        self.processing
            .await
            .context("the processor task panicked")?;
        self.batching.await.context("the batcher task panicked")?;
        Ok(())
    }
}

/// How often the list of tenants being erased is reloaded from the store (erasures started by
/// another instance), and idle tenants' write quotas are forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// How requests will be authenticated, and what the operator should know about it.
async fn auth(settings: &Settings, store: &dyn AccessStore) -> anyhow::Result<Auth> {
    if settings.insecure_no_auth {
        warn!("--insecure-no-auth: every request has full admin rights without a token");
        eprintln!(
            "\n  WARNING: authentication is OFF (--insecure-no-auth). Anyone who can reach this\n  \
             server can read, write and erase every tenant. Use this for local demos only.\n"
        );
        return Ok(Auth::Insecure);
    }
    let jwt = settings.jwt.as_ref().map(JwtVerifier::new).transpose()?;
    if jwt.is_none() && store.tokens().await?.is_empty() {
        eprintln!(
            "\n  No API tokens exist yet, so every request but /healthz and /readyz is refused (401).\n  \
             Create the first admin token (it works while the server runs) with:\n\n    \
             tenantsync token create --scope admin --name admin{}\n\n  \
             and send it as  Authorization: Bearer <token>.\n",
            settings.store_flag_hint()
        );
    }
    Ok(Auth::enforced(jwt))
}

/// Opens the backends, declares the configured datasets and starts the processor and the API.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    let log = open_log(&settings.log, &settings.kafka_options).await?;
    let store = open_store(&settings.store).await?;
    let auth = auth(settings, store.as_ref()).await?;
    // Shared by every instance on this store, so that cursors work on all of them.
    let cursor_key = store
        .secret(CursorKey::SECRET_NAME, &CursorKey::generate())
        .await
        .context("cannot read the cursor key from the store")?;
    let datasets = Arc::new(Datasets::new(
        log.clone(),
        store.clone(),
        Topics::new(&settings.topic_prefix),
        settings.tombstone_retention,
    ));
    for d in &settings.datasets {
        let dataset = Dataset {
            name: d.name.clone(),
            partitions: d.partitions,
        };
        datasets
            .declare(&dataset)
            .await
            .with_context(|| format!("cannot declare dataset {} from the config file", d.name))?;
    }
    let hub = Hub::new();
    let processor = Arc::new(
        Processor::new(
            log.clone(),
            store.clone(),
            datasets.clone(),
            ProcessorConfig {
                max_batch: settings.max_batch,
                ..ProcessorConfig::default()
            },
        )
        .with_observer(hub.clone()),
    );
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let batcher = Arc::new(BatcherStage::new(
        log.clone(),
        store.clone(),
        datasets.clone(),
        StageConfig {
            limits: settings.batch_limits,
            dataset_limits: settings.dataset_batch_limits.clone(),
            owner: instance_name(addr),
            ..StageConfig::default()
        },
    ));
    let shutdown = CancellationToken::new();
    tokio::spawn(hub.clone().run(
        log.clone(),
        store.clone(),
        datasets.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(retention::run(
        store.clone(),
        hub.clone(),
        datasets.clone(),
        settings.tombstone_retention,
        (settings.tombstone_retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        shutdown.clone(),
    ));
    let state = Arc::new(AppState {
        batches: BatchQueue::new(
            log.clone(),
            store.clone(),
            datasets.topics().clone(),
            batcher.emitted(),
        ),
        log,
        store,
        datasets,
        applied: processor.applied(),
        hub,
        processor: Some(processor.clone()),
        metrics: ApiMetrics::default(),
        config: ApiConfig {
            max_body_bytes: settings.max_body_bytes,
            apply_timeout: settings.apply_timeout,
            feed: settings.feed.clone(),
        },
        batcher: Some(batcher.clone()),
        auth,
        cursor_key: CursorKey::new(&cursor_key),
        quotas: WriteQuotas::new(settings.write_quota, &settings.quota_overrides),
        erasures: Erasures::default(),
    });
    erasure::resume(&state)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resume tenant erasures: {e:?}"))?;
    tokio::spawn(housekeeping(state.clone(), shutdown.clone()));

    let processing = tokio::spawn(processor.clone().run(shutdown.clone()));
    let batching = tokio::spawn(batcher.run(shutdown.clone()));
    let signal = shutdown.clone();
    let server = tokio::spawn(async move {
        // into_make_service builds the routes once; serving the Router itself rebuilds them for
        // every connection (several KiB each).
        axum::serve(listener, tenantsync_api::router(state).into_make_service())
            .with_graceful_shutdown(signal.cancelled_owned())
            .await
    });
    Ok(Running {
        addr,
        processor,
        shutdown,
        server,
        processing,
        batching,
    })
}

/// This instance's name in the store's batcher claims: unique per host and port, and the same
/// when the instance restarts, so that it takes its claims back at once.
fn instance_name(addr: SocketAddr) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{addr}")
}

/// Every [`HOUSEKEEPING`] interval: picks up erasures started elsewhere and forgets full
/// write-quota buckets.
async fn housekeeping(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
        }
        state.quotas.forget_full();
        if let Err(error) = erasure::resume(&state).await {
            warn!(?error, "cannot reload tenant erasures");
        }
    }
}

/// Raises this process's open-file limit to its hard limit: every subscriber connection holds
/// a file descriptor, and the usual soft limit (1024) would refuse connections long before
/// memory runs short.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => warn!(%error, soft, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(error) => warn!(%error, "cannot read the open-file limit"),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds on Unix");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
