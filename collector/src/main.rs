use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ember_collector::cli::Cli;
use ember_collector::server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-collector: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(server::run(config, shutdown_signal(), |bound| {
        // A stable line for scripts and tests that start the collector on port 0.
        eprintln!("ember-collector: listening grpc={} http=http://{}", bound.grpc, bound.http);
    }))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
