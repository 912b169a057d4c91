//! `gyoza`: the command-line tool of the gyoza job scheduler.
//!
//! Thin by design: it parses arguments, sets up logging and signals, and calls the libraries
//! (`gyoza-host` for the server, `gyoza-worker` for the worker).
//!
//! # Layout
//! - [`Cli`] / [`Command`]: the argument grammar (clap derive).
//! - [`shutdown_signal`]: SIGINT / SIGTERM → graceful shutdown.

use std::io::IsTerminal;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gyoza_host::ServerConfig;
use gyoza_worker::WorkerConfig;
use tracing_subscriber::EnvFilter;

/// gyoza: a job scheduler for containerised operations, with WebAssembly scheduling strategies.
#[derive(Debug, Parser)]
#[command(name = "gyoza", version, about)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, global = true, env = "GYOZA_LOG_LEVEL", default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gyoza server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run a gyoza worker.
    #[command(subcommand)]
    Worker(WorkerCommand),
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Start a worker: heartbeat, claim runs and execute them as Docker containers until
    /// SIGINT or SIGTERM (running containers are then stopped and their runs reported FAILED).
    Start(WorkerConfig),
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Start the server (REST API on the embedded store) and serve until SIGINT or SIGTERM.
    Start(ServerConfig),
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .with_context(|| format!("invalid GYOZA_LOG_LEVEL '{filter}'"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log_level)?;
    match cli.command {
        Command::Server(ServerCommand::Start(config)) => {
            gyoza_host::server::run(config, shutdown_signal()).await?;
        }
        Command::Worker(WorkerCommand::Start(config)) => {
            gyoza_worker::run(config, shutdown_signal()).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
