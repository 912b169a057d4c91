//! `gyoza up`: a server and one local worker in one process, on the embedded store in
//! `./.gyoza` with the built-in strategies. Ctrl-C stops the worker (its runs are handed back
//! as failed attempts), then the server.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser};
use gyoza_core::client::Client;
use gyoza_host::ServerConfig;
use gyoza_worker::WorkerConfig;
use tokio::sync::watch;

/// Settings of `gyoza up`: the server's, plus a few for its worker.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerConfig,
    /// Runs the local worker executes at once.
    #[arg(long, default_value_t = 2)]
    max_concurrent: u32,
    /// Worker name (default: this host's name and 8 hex digits, kept in <data dir>/worker,
    /// the local worker's state directory).
    #[arg(long)]
    worker_id: Option<String>,
    /// CPU cores the worker offers (default: all).
    #[arg(long)]
    worker_cpu_cores: Option<u32>,
    /// RAM the worker offers, in MB (default: all).
    #[arg(long)]
    worker_ram_mb: Option<u64>,
}

/// Parses worker flags the way `gyoza worker start` does, so that `up` and `worker start`
/// share one definition of the worker's settings.
#[derive(Debug, Parser)]
struct WorkerFlags {
    #[command(flatten)]
    config: WorkerConfig,
}

fn generate_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom to generate an API key")?;
    Ok(format!(
        "gyoza-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// A part of the cluster running in its own task.
type Part = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Runs the local cluster until `shutdown`.
pub async fn up(
    mut args: UpArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if args.server.port == 0 {
        bail!("gyoza up needs a fixed --port (its worker must know where the server is)");
    }
    let key = api_key(&mut args)?;
    let url = local_url(&args);
    println!(
        "Server: {url}   dashboard: {url}/dashboard   data: {}",
        args.server.data_dir.display()
    );

    let (stop_server, mut server_stopping) = watch::channel(false);
    let server_config = args.server.clone();
    let mut server: Part = tokio::spawn(async move {
        gyoza_host::server::run(server_config, async move {
            let _ = server_stopping.changed().await;
        })
        .await
        .map_err(anyhow::Error::from)
    });
    // The worker starts once the server answers.
    if !server_answers(&url, &key, &server).await? {
        let _ = stop_server.send(true);
        return match (&mut server).await {
            Ok(Err(e)) => Err(e).context("the server did not start"),
            _ => bail!("the server did not answer on {url} within 30 s"),
        };
    }

    let worker_config = worker_config(&args, &url, &key)?;
    let (stop_worker, mut worker_stopping) = watch::channel(false);
    let mut worker: Part = tokio::spawn(async move {
        gyoza_worker::run(worker_config, async move {
            let _ = worker_stopping.changed().await;
        })
        .await
        .map_err(anyhow::Error::from)
    });

    // Run until Ctrl-C, or until either part stops on its own (an error).
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        ended = &mut worker => {
            let _ = stop_server.send(true);
            let _ = (&mut server).await;
            return part_ended("worker", ended);
        }
        ended = &mut server => {
            let _ = stop_worker.send(true);
            let _ = (&mut worker).await;
            return part_ended("server", ended);
        }
    };
    // The worker first: it reports its runs to the server before the server goes.
    let _ = stop_worker.send(true);
    match worker.await {
        Ok(Err(e)) => tracing::error!(error = %e, "the worker stopped with an error"),
        Err(e) => tracing::error!(error = %e, "the worker task failed"),
        Ok(Ok(())) => {}
    }
    let _ = stop_server.send(true);
    server.await.context("the server task failed")??;
    Ok(())
}

/// The API key the server and worker use: the configured one, or a new one (printed, and
/// set on the server's settings).
fn api_key(args: &mut UpArgs) -> anyhow::Result<String> {
    if let Some(key) = args.server.api_key.clone().filter(|k| !k.trim().is_empty()) {
        return Ok(key);
    }
    let key = generate_key()?;
    args.server.api_key = Some(key.clone());
    println!("Generated API key: {key}");
    println!("  export GYOZA_API_KEY={key}");
    Ok(key)
}

/// Where the local worker finds the server (`0.0.0.0` is reached on the loopback address).
fn local_url(args: &UpArgs) -> String {
    let host = if args.server.host == "0.0.0.0" {
        "127.0.0.1"
    } else {
        args.server.host.as_str()
    };
    format!("http://{host}:{}", args.server.port)
}

/// Polls the server's health for up to 30 s; whether it answered (false also when the
/// server task ended first).
async fn server_answers(url: &str, key: &str, server: &Part) -> anyhow::Result<bool> {
    let client = Client::new(url, Some(key))?;
    for _ in 0..300 {
        if server.is_finished() {
            return Ok(false);
        }
        if client.health().await.is_ok() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// The local worker's settings, parsed as `gyoza worker start` parses its flags.
fn worker_config(args: &UpArgs, url: &str, key: &str) -> anyhow::Result<WorkerConfig> {
    let state_dir = args.server.data_dir.join("worker");
    let mut flags = vec![
        "worker".to_owned(),
        "--server-url".into(),
        url.to_owned(),
        "--api-key".into(),
        key.to_owned(),
        "--max-concurrent".into(),
        args.max_concurrent.to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
    ];
    for (flag, value) in [
        ("--worker-id", args.worker_id.clone()),
        ("--cpu-cores", args.worker_cpu_cores.map(|c| c.to_string())),
        ("--ram-mb", args.worker_ram_mb.map(|r| r.to_string())),
    ] {
        if let Some(value) = value {
            flags.extend([flag.to_owned(), value]);
        }
    }
    Ok(WorkerFlags::try_parse_from(flags)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .config)
}

/// What `up` answers when its `part` ("server" or "worker") stopped on its own.
fn part_ended(
    part: &str,
    ended: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context(format!("the {part} stopped")),
        Err(e) => Err(e).context(format!("the {part} task failed")),
    }
}
