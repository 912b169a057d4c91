//! `gyoza`: the command-line tool of the gyoza job scheduler.
//!
//! Thin by design: it parses arguments, sets up logging and signals, and calls the libraries
//! (`gyoza-host` for the server, `gyoza-worker` for the worker).
//!
//! # Layout
//! - [`Cli`] / [`Command`]: the argument grammar (clap derive).
//! - [`shutdown_signal`]: SIGINT / SIGTERM → graceful shutdown.
//! - `remote`: commands that talk to a server (runs, definitions, workers, queues,
//!   strategies, run).
//! - `deploy`: the deploy file format and `gyoza deploy`.
//! - `watch`: following a run's live event stream.
//! - `up`: a server and a local worker in one process.
//! - `table`: human-readable tables.
//!
//! Its integration tests (`cli/tests/`) run this binary against real server processes started
//! by `gyoza-e2e`'s `Server`, the one process harness of the workspace.
//!
//! Exit codes: 0 success; 1 an error, or a waited-for run that FAILED; 2 a usage error;
//! 3 a waited-for run that was CANCELLED.

mod deploy;
mod remote;
mod table;
mod up;
mod watch;

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
    /// Check and try out scheduling strategy plugins (.wasm components).
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Run a gyoza worker.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// A server and one local worker in one process (embedded store in ./.gyoza, built-in
    /// strategies); prints the URL and, if none is set, a generated API key. Ctrl-C stops both.
    Up(up::UpArgs),
    /// Create or replace the definitions of a deploy file (see `gyoza deploy --help`).
    Deploy {
        /// The deploy file (YAML; its format is documented in the README).
        #[arg(short = 'f', long = "file", default_value = "gyoza.yaml")]
        file: std::path::PathBuf,
        /// Build each definition's image (its `build:` section) with `docker build` first.
        #[arg(long)]
        build: bool,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Submit a run of a definition (or of an image with --image); --follow shows it live.
    Run {
        #[command(flatten)]
        args: remote::RunArgs,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Runs: list, get, cancel, retry, events, attempts, watch, logs.
    Runs {
        #[command(subcommand)]
        command: remote::RunsCommand,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Definitions: list, get.
    Definitions {
        #[command(subcommand)]
        command: remote::DefinitionsCommand,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Workers: list.
    Workers {
        #[command(subcommand)]
        command: remote::WorkersCommand,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Queues: list (weights, quotas, PENDING and held runs, fair share).
    Queues {
        #[command(subcommand)]
        command: remote::QueuesCommand,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Scheduling strategies: list, use.
    Strategies {
        #[command(subcommand)]
        command: remote::StrategiesCommand,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Start a worker: heartbeat, claim runs and execute them as Docker containers until
    /// SIGINT or SIGTERM (running containers are then stopped and their runs reported FAILED).
    Start(WorkerConfig),
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Check that FILE is a strategy plugin the server can load, and which WIT version it
    /// implements.
    Check {
        /// The plugin (.wasm component).
        file: std::path::PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Decide a scenario (a JSON cluster, its running and pending runs) with FILE: the
    /// assignments, the preemptions, the reasons for runs left pending, and the latency per
    /// call. The scenario is a file, or a live server's claim for one worker (a dry run:
    /// what FILE would decide now; nothing is claimed). A scenario with `expect` (the
    /// assignments, preemptions or reasons it should get) fails when the decision differs.
    Simulate {
        /// The plugin (.wasm component), or the name of a built-in strategy (`fair-share`).
        file: std::path::PathBuf,
        /// The scenario file (see examples/strategy-template/scenario.json).
        #[arg(
            long,
            required_unless_present = "from_server",
            conflicts_with = "from_server"
        )]
        scenario: Option<std::path::PathBuf>,
        /// Take the scenario from this server: what a claim by `--worker` would be shown now
        /// (`GET /workers/{id}/claim-scenario`), with its queues and strategy configuration.
        #[arg(long, value_name = "URL", requires = "worker")]
        from_server: Option<String>,
        /// The worker whose claim `--from-server` takes.
        #[arg(long, value_name = "ID")]
        worker: Option<String>,
        /// The claim's `max` with `--from-server` (1-100).
        #[arg(long, default_value_t = 10)]
        max: u32,
        /// API key for `--from-server` (sent as X-API-Key).
        #[arg(long, env = "GYOZA_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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

async fn run(cli: Cli) -> anyhow::Result<remote::Outcome> {
    init_logging(&cli.log_level)?;
    match cli.command {
        Command::Up(args) => up::up(args, shutdown_signal()).await?,
        Command::Deploy { file, build, conn } => return deploy::deploy(&conn, &file, build).await,
        Command::Run { args, conn } => return remote::run(&conn, args).await,
        Command::Runs { command, conn } => return remote::runs(&conn, command).await,
        Command::Definitions { command, conn } => return remote::definitions(&conn, command).await,
        Command::Workers { command, conn } => return remote::workers(&conn, command).await,
        Command::Queues { command, conn } => return remote::queues(&conn, command).await,
        Command::Strategies { command, conn } => return remote::strategies(&conn, command).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "gyoza", &mut std::io::stdout());
        }
        Command::Server(ServerCommand::Start(config)) => {
            gyoza_host::server::run(config, shutdown_signal()).await?;
        }
        Command::Plugins(command) => {
            use gyoza_host::strategy::scenario;
            // A live server's scenario is fetched here; the plugin then runs on a blocking
            // thread (WASI's synchronous bindings refuse async ones).
            let live = match &command {
                PluginsCommand::Simulate {
                    from_server: Some(url),
                    worker: Some(worker),
                    max,
                    api_key,
                    ..
                } => {
                    let client = gyoza_core::client::Client::new(url, api_key.as_deref())?;
                    let value = client.claim_scenario(worker, *max).await?;
                    Some(
                        serde_json::from_value::<scenario::Scenario>(value).map_err(|e| {
                            anyhow::anyhow!(
                                "the server's claim scenario is not one this CLI reads: {e}"
                            )
                        })?,
                    )
                }
                _ => None,
            };
            let text = tokio::task::spawn_blocking(move || match command {
                PluginsCommand::Check { file, json } => scenario::check_command(&file, json),
                PluginsCommand::Simulate {
                    file,
                    scenario: path,
                    json,
                    ..
                } => match (live, path) {
                    (Some(live), _) => scenario::simulate_scenario_command(&file, &live, json),
                    (None, Some(path)) => scenario::simulate_command(&file, &path, json),
                    (None, None) => Err(scenario::ScenarioError::Scenario(
                        "name a --scenario file or --from-server URL".into(),
                    )),
                },
            })
            .await?;
            let text = match text {
                // The report still goes to stdout: it says how the decision differs.
                Err(scenario::ScenarioError::Unexpected(report)) => {
                    println!("{report}");
                    return Err(scenario::ScenarioError::Unexpected(String::new()).into());
                }
                other => other?,
            };
            println!("{text}");
        }
        Command::Worker(WorkerCommand::Start(config)) => {
            gyoza_worker::run(config, shutdown_signal()).await?;
        }
    }
    Ok(remote::Outcome::Done)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(remote::Outcome::Done) => std::process::ExitCode::SUCCESS,
        Ok(remote::Outcome::RunFailed) => std::process::ExitCode::from(1),
        Ok(remote::Outcome::RunCancelled) => std::process::ExitCode::from(3),
        Err(e) => {
            // A server's refusal is shown as its `detail`, on one line.
            match e.downcast_ref::<gyoza_core::client::ClientError>() {
                Some(client) if client.detail().is_some() => {
                    let status = client.status().map(|s| s.as_u16()).unwrap_or_default();
                    eprintln!(
                        "error: {} (HTTP {status})",
                        client.detail().unwrap_or_default()
                    );
                }
                _ => eprintln!("error: {e:#}"),
            }
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
