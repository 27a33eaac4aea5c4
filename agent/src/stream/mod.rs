//! `ember-agent stream`: sample continuously and ship batches to a collector.
//!
//! A sampling thread (the `record` pipeline, cut into windows) hands batches to an async
//! sender that keeps them until the collector acks them. See ARCHITECTURE.md.

pub(crate) mod batch;
pub(crate) mod buffer;
pub(crate) mod client;
mod clock;
mod collectors;
pub(crate) mod describe;
pub(crate) mod discovery;
mod kubernetes;
pub mod metrics;
pub(crate) mod sampler;
pub(crate) mod sender;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::perf::SamplingConfig;
use crate::sampling::{SamplingError, Signals};
pub use client::ClientOptions;
pub use sampler::StreamTargets;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub targets: StreamTargets,
    pub sampling: SamplingConfig,
    pub collectors: Vec<String>,
    pub client: ClientOptions,
    pub flush_interval: Duration,
    pub buffer_bytes: usize,
    pub final_flush: Duration,
    pub metrics_listen: Option<String>,
    pub tasks: crate::tasks::TaskMode,
    pub service: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Label processes with their pod and container from the Kubernetes API (`--kubernetes`).
    pub kubernetes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Start(#[from] SamplingError),
    #[error("cannot listen on {addr} for metrics: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the sampling thread stopped unexpectedly")]
    SamplerDied,
    #[error("--kubernetes: {0}")]
    Kubernetes(#[from] kubernetes::ApiError),
}

fn agent_id() -> String {
    let host = crate::process::procfs::hostname();
    format!("{host}-{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// Runs until the targets exit (after a final flush) or SIGINT/SIGTERM. Returns the exit
/// status: the launched command's, or 0.
pub fn run(config: StreamConfig) -> Result<i32, StreamError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(StreamError::Runtime)?;
    // The channels spawn their connection tasks on the runtime, so create them inside.
    let collectors = {
        let _inside = runtime.enter();
        collectors::Collectors::new(config.collectors.clone(), config.client.clone())?
    };
    let metrics = Arc::new(metrics::AgentMetrics::new());
    if let Some(addr) = &config.metrics_listen {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| StreamError::Metrics { addr: addr.clone(), source })?;
        if let Ok(local) = listener.local_addr() {
            eprintln!("ember-agent: metrics at http://{local}/metrics");
        }
        runtime.spawn(metrics::serve(listener, metrics.clone()));
    }
    let pods = if config.kubernetes {
        let api = kubernetes::ApiConfig::from_environment()?;
        Some(kubernetes::PodDirectory::start(api).map_err(StreamError::Runtime)?)
    } else {
        None
    };
    let signals = Signals::install()?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sampler_config = sampler::SamplerConfig {
        targets: config.targets.clone(),
        sampling: config.sampling.clone(),
        flush_interval: config.flush_interval,
        tasks: config.tasks,
        labels: describe::CommonLabels::from_environment(config.service.clone(), config.labels.clone()),
        signals,
        pods,
    };
    let sampler_metrics = metrics.clone();
    let sampler = std::thread::Builder::new()
        .name("ember-sampler".into())
        .spawn(move || sampler::run(sampler_config, tx, sampler_metrics, ready_tx))
        .map_err(StreamError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(text)) => tracing::info!(collectors = %config.collectors.join(", "), "streaming {text}"),
        Ok(Err(e)) => {
            let _ = sampler.join();
            return Err(e.into());
        }
        Err(_) => return Err(StreamError::SamplerDied),
    }
    let sender_config = sender::SenderConfig {
        agent_id: agent_id(),
        buffer_bytes: config.buffer_bytes,
        final_flush: config.final_flush,
    };
    runtime.block_on(sender::run(sender_config, collectors, rx, metrics));
    let child_exit = sampler.join().map_err(|_| StreamError::SamplerDied)?;
    Ok(child_exit.map_or(0, crate::process::launch::ChildExit::shell_status))
}
