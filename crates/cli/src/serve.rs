//! `tenantsync serve`: opens the log and the store, declares configured datasets, then runs the
//! HTTP API and every background service under one supervisor until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tenantsync_schema::Schemas;

use anyhow::Context;
use tenantsync_api::{ApiConfig, ApiMetrics, AppState, Auth, Instances, WriteQuotas};
use tenantsync_auth::JwtVerifier;
use tenantsync_batcher::{BatchQueue, BatcherStage, StageConfig};
use tenantsync_core::Topics;
use tenantsync_dataset::Datasets;
use tenantsync_feed::{CursorKey, Hub, HubTails};
use tenantsync_processor::{Processor, ProcessorConfig};
use tenantsync_push::Push;
use tenantsync_push::webhooks::ssrf::Guard;
use tenantsync_retention::{Erasures, IdempotencyPruner, tombstones};
use tenantsync_sources::{Ingest, Sources};
use tenantsync_store::{AccessStore, Dataset, MasterStore};
use tenantsync_supervisor::{RestartPolicy, Supervisor};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backends::{open_log, open_store};
use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    raise_fd_limit();
    let running = start(&settings).await?;
    info!(log = %settings.log, store = %settings.store, "tenantsync started");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("tenantsync listening on http://{}", running.addr);
    wait_for_signal().await;
    info!(grace = ?settings.shutdown_timeout, "shutting down");
    running.stop(settings.shutdown_timeout).await?;
    info!("stopped");
    Ok(())
}

/// A started instance: the API listening, every background service running.
pub struct Running {
    pub addr: SocketAddr,
    pub processor: Arc<Processor>,
    supervisor: Supervisor,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting requests and every background service (the processor after its current
    /// batch, the batcher after a last checkpoint), lets in-flight requests finish, and waits
    /// for all of it, at most `grace`.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        // Cancels the server's graceful shutdown too.
        let services = self.supervisor.shutdown(grace).await;
        let mut server = self.server;
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(served) => served
                .context("the HTTP server task panicked")?
                .context("the HTTP server failed")?,
            // A request that outlives the grace (a batch lease waiting for work, a slow client)
            // is cut off: its client retries, and nothing it was told was accepted is lost.
            Err(_) => {
                warn!(?grace, "cutting off requests still in flight");
                server.abort();
            }
        }
        services?;
        Ok(())
    }
}

/// How often idle tenants' write quotas are forgotten.
const QUOTA_SWEEP: Duration = Duration::from_secs(5);

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
    // Bound first: the default instance name is the address actually listened on.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let mut kafka = settings.kafka.clone();
    let instance = kafka
        .instance_name
        .get_or_insert_with(|| default_instance_name(addr))
        .clone();
    let log = open_log(&settings.log, &kafka).await?;
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
    // Topics of datasets declared earlier (through the API, maybe by another instance) are
    // checked now too: a topic that is wrong is a start-up error, not a failing service.
    for dataset in datasets.all().await? {
        datasets
            .ensure_topics(&dataset)
            .await
            .with_context(|| format!("the topics of dataset {} are not usable", dataset.name))?;
    }
    let hub = Hub::new();
    let schemas = Arc::new(Schemas::new(
        store.clone(),
        Topics::new(&settings.topic_prefix),
    ));
    let processor = Arc::new(
        Processor::new(
            log.clone(),
            store.clone(),
            datasets.clone(),
            schemas.clone(),
            ProcessorConfig {
                max_batch: settings.max_batch,
                ..ProcessorConfig::default()
            },
        )
        .with_observer(hub.clone()),
    );
    let batcher = Arc::new(BatcherStage::new(
        log.clone(),
        store.clone(),
        datasets.clone(),
        StageConfig {
            limits: settings.batch_limits,
            dataset_limits: settings.dataset_batch_limits.clone(),
            owner: instance.clone(),
            ..StageConfig::default()
        },
    ));
    let erasures = Arc::new(Erasures::new(
        store.clone(),
        datasets.clone(),
        hub.clone(),
        processor.applied(),
    ));
    let quotas = Arc::new(WriteQuotas::new(
        settings.write_quota,
        &settings.quota_overrides,
    ));
    let instances = Arc::new(Instances::new(
        store.clone(),
        instance.clone(),
        quotas.clone(),
    ));
    // Registered before the first request, so that it is measured against this instance's
    // share of the quotas and the others count this one within their next heartbeat.
    let live = instances
        .heartbeat()
        .await
        .context("cannot register this instance in the store")?;
    info!(
        instance = instances.name(),
        live, "registered among the live instances"
    );
    let sources = Arc::new(Sources::new(
        store.clone(),
        Arc::new(Ingest::new(
            datasets.clone(),
            quotas.clone(),
            store.clone(),
            schemas.clone(),
        )),
        instance.clone(),
        {
            let quotas = quotas.clone();
            Arc::new(move || quotas.instances())
        },
    ));
    define_configured_sources(settings, store.as_ref(), &datasets).await?;
    let webhook_guard =
        Guard::new(&settings.push.webhooks).context("invalid webhooks configuration")?;
    let push = Arc::new(Push::new(
        store.clone(),
        hub.clone(),
        Arc::new(CursorKey::new(&cursor_key)),
        settings.push.clone(),
        instance.clone(),
        {
            let quotas = quotas.clone();
            Arc::new(move || quotas.instances())
        },
    ));
    let pruner = Arc::new(IdempotencyPruner::new(
        store.clone(),
        settings.idempotency_retention,
    ));

    let supervisor = Supervisor::new(RestartPolicy::default());
    schemas.supervise(&supervisor);
    let tails = Arc::new(HubTails {
        hub: hub.clone(),
        log: log.clone(),
        store: store.clone(),
        datasets: datasets.clone(),
    });
    tenantsync_dataset::supervise(
        &supervisor,
        datasets.clone(),
        vec![processor.clone(), batcher.clone(), tails],
    );
    sources.supervise(&supervisor);
    push.supervise(&supervisor);
    supervisor.spawn("hub/sweep", {
        let hub = hub.clone();
        move |stop| {
            let hub = hub.clone();
            async move { hub.sweeper(stop).await }
        }
    });
    supervisor.spawn("retention", {
        let (store, hub, datasets) = (store.clone(), hub.clone(), datasets.clone());
        let retention = settings.tombstone_retention;
        move |stop| {
            tombstones::run(
                store.clone(),
                hub.clone(),
                datasets.clone(),
                retention,
                tenantsync_retention::interval(retention),
                stop,
            )
        }
    });
    supervisor.spawn("erasure", {
        let erasures = erasures.clone();
        move |stop| {
            let erasures = erasures.clone();
            async move { erasures.run(stop).await }
        }
    });
    supervisor.spawn("idempotency-prune", {
        let pruner = pruner.clone();
        let interval = tenantsync_retention::interval(settings.idempotency_retention);
        move |stop| {
            let pruner = pruner.clone();
            async move { pruner.run(interval, stop).await }
        }
    });
    supervisor.spawn("instances", {
        let instances = instances.clone();
        move |stop| {
            let instances = instances.clone();
            async move { instances.run(stop).await }
        }
    });
    supervisor.spawn("quota-sweep", {
        let quotas = quotas.clone();
        move |stop| {
            let quotas = quotas.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(QUOTA_SWEEP) => quotas.forget_full(),
                    }
                }
            }
        }
    });

    // Ends the streams and long-polls of tokens revoked anywhere (another instance, the CLI).
    if let Some(watcher) = auth.watcher(store.clone()) {
        let watcher = Arc::new(watcher);
        supervisor.spawn("revocations", move |stop| {
            let watcher = watcher.clone();
            async move { watcher.run(stop).await }
        });
    }

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
        schemas,
        applied: processor.applied(),
        hub: hub.clone(),
        metrics: ApiMetrics::default(),
        config: ApiConfig {
            max_body_bytes: settings.max_body_bytes,
            apply_timeout: settings.apply_timeout,
            feed: settings.feed.clone(),
        },
        auth,
        cursor_key: CursorKey::new(&cursor_key),
        quotas,
        erasures,
        webhook_guard,
        metrics_sources: vec![
            processor.clone(),
            batcher,
            hub,
            instances,
            pruner,
            sources,
            push,
            Arc::new(supervisor.clone()),
        ],
        supervisor: supervisor.clone(),
    });
    let signal = supervisor.shutdown_token();
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
        supervisor,
        server,
    })
}

/// Stores the config file's sources (or updates them). A source whose systems cannot be reached
/// now is stored anyway, with a warning: it runs once they answer, and its status shows why not
/// until then. One that conflicts with its stored definition (another kind or shard count)
/// stops start-up.
async fn define_configured_sources(
    settings: &Settings,
    store: &dyn MasterStore,
    datasets: &Datasets,
) -> anyhow::Result<()> {
    for source in &settings.sources {
        tenantsync_sources::define(
            store,
            datasets,
            &source.name,
            &source.definition,
            &source.json,
            false,
        )
        .await
        .with_context(|| format!("cannot define source {} from the config file", source.name))?;
        if let Err(error) = tenantsync_sources::prepare(&source.name, &source.definition).await {
            warn!(source = %source.name, %error, "a source from the config file cannot run yet");
        }
    }
    Ok(())
}

/// This instance's name when `--instance-name` is not given (in the store's batcher claims and
/// instance registry, and as its Kafka static membership): unique per host and port, and the
/// same when the instance restarts, so that it takes its claims back at once.
fn default_instance_name(addr: SocketAddr) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{addr}")
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
