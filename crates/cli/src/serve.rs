//! `tenantsync serve`: opens the log and the store, declares configured datasets, then runs the
//! processor and the HTTP API until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tenantsync_api::{ApiConfig, AppState};
use tenantsync_core::Topics;
use tenantsync_processor::{Datasets, Processor, ProcessorConfig};
use tenantsync_store::Dataset;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backends::{open_log, open_store, redact};
use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
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
}

impl Running {
    /// Stops accepting requests, lets in-flight ones finish, then stops the processor after its
    /// current batch.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .context("the HTTP server task panicked")?
            .context("the HTTP server failed")?;
        self.processing
            .await
            .context("the processor task panicked")?;
        Ok(())
    }
}

/// Opens the backends, declares the configured datasets and starts the processor and the API.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    let log = open_log(&settings.log, &settings.kafka_options).await?;
    let store = open_store(&settings.store).await?;
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
    let processor = Arc::new(Processor::new(
        log.clone(),
        store.clone(),
        datasets.clone(),
        ProcessorConfig {
            max_batch: settings.max_batch,
            ..ProcessorConfig::default()
        },
    ));
    let state = Arc::new(AppState {
        log,
        store,
        datasets,
        applied: processor.applied(),
        config: ApiConfig {
            max_body_bytes: settings.max_body_bytes,
            apply_timeout: settings.apply_timeout,
        },
    });

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let processing = tokio::spawn(processor.clone().run(shutdown.clone()));
    let signal = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, tenantsync_api::router(state))
            .with_graceful_shutdown(signal.cancelled_owned())
            .await
    });
    Ok(Running {
        addr,
        processor,
        shutdown,
        server,
        processing,
    })
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
