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
    /// Worker name (default: this host's name).
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

/// Runs the local cluster until `shutdown`.
pub async fn up(
    mut args: UpArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if args.server.port == 0 {
        bail!("gyoza up needs a fixed --port (its worker must know where the server is)");
    }
    let key = match args.server.api_key.clone().filter(|k| !k.trim().is_empty()) {
        Some(key) => key,
        None => {
            let key = generate_key()?;
            args.server.api_key = Some(key.clone());
            println!("Generated API key: {key}");
            println!("  export GYOZA_API_KEY={key}");
            key
        }
    };
    let host = if args.server.host == "0.0.0.0" {
        "127.0.0.1"
    } else {
        args.server.host.as_str()
    };
    let url = format!("http://{host}:{}", args.server.port);
    println!(
        "Server: {url}   dashboard: {url}/dashboard   data: {}",
        args.server.data_dir.display()
    );

    let (stop_server, mut server_stopping) = watch::channel(false);
    let server_config = args.server.clone();
    let mut server = tokio::spawn(async move {
        gyoza_host::server::run(server_config, async move {
            let _ = server_stopping.changed().await;
        })
        .await
    });

    // The worker starts once the server answers.
    let client = Client::new(&url, Some(&key))?;
    let mut ready = false;
    for _ in 0..300 {
        if server.is_finished() {
            break;
        }
        if client.health().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        let _ = stop_server.send(true);
        return match (&mut server).await {
            Ok(Err(e)) => Err(e).context("the server did not start"),
            _ => bail!("the server did not answer on {url} within 30 s"),
        };
    }

    let work_dir = args.server.data_dir.join("work");
    let mut flags = vec![
        "worker".to_owned(),
        "--server-url".into(),
        url.clone(),
        "--api-key".into(),
        key.clone(),
        "--max-concurrent".into(),
        args.max_concurrent.to_string(),
        "--work-dir".into(),
        work_dir.display().to_string(),
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
    let worker_config = WorkerFlags::try_parse_from(flags)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .config;
    let (stop_worker, mut worker_stopping) = watch::channel(false);
    let mut worker = tokio::spawn(async move {
        gyoza_worker::run(worker_config, async move {
            let _ = worker_stopping.changed().await;
        })
        .await
    });

    // Run until Ctrl-C, or until either part stops on its own (an error).
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        ended = &mut worker => {
            let _ = stop_server.send(true);
            let _ = (&mut server).await;
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("the worker stopped"),
                Err(e) => Err(e).context("the worker task failed"),
            };
        }
        ended = &mut server => {
            let _ = stop_worker.send(true);
            let _ = (&mut worker).await;
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("the server stopped"),
                Err(e) => Err(e).context("the server task failed"),
            };
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
    result
}
