//! Commands that talk to a gyoza server: runs, definitions, workers, queues, strategies,
//! `run`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gyoza_core::api::{OpRunCreate, OpRunCreateFromDefinition, OpRunView, QueueList, StrategyList};
use gyoza_core::client::{Client, DEFAULT_SERVER_URL, RunFilter};
use gyoza_core::{Constraints, OpRunState, RetryPolicy};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::table;

/// Where the server is and how to print.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// URL of the gyoza server.
    #[arg(long = "server", env = "GYOZA_SERVER_URL", default_value = DEFAULT_SERVER_URL, global = true)]
    pub server: String,
    /// API key (sent as X-API-Key).
    #[arg(long, env = "GYOZA_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON (the API's own) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    /// A client for the server.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.server, self.api_key.as_deref())?)
    }

    /// Prints `value` as JSON when `--json`, else `human()`.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            print!("{}", human());
        }
        Ok(())
    }
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// A waited-for run ended FAILED: exit 1.
    RunFailed,
    /// A waited-for run ended CANCELLED: exit 3.
    RunCancelled,
}

/// `gyoza runs …`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs in this state (PENDING, ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELLED).
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this definition.
        #[arg(long)]
        definition: Option<String>,
        /// Only runs of this image.
        #[arg(long)]
        image: Option<String>,
        /// Only runs in this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only runs with this label.
        #[arg(long, value_name = "KEY:VALUE")]
        label: Option<String>,
        /// Page size (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The page of runs older than this run id.
        #[arg(long, conflicts_with = "ending_before")]
        starting_after: Option<String>,
        /// The page of runs newer than this run id.
        #[arg(long)]
        ending_before: Option<String>,
    },
    /// Show one run.
    Get {
        /// Run id.
        id: String,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        id: String,
    },
    /// Retry a run now (a new attempt), whatever its retry policy says.
    Retry {
        /// Run id.
        id: String,
    },
    /// The current attempt's events.
    Events {
        /// Run id.
        id: String,
        /// Only events with an index greater than this.
        #[arg(long)]
        after: Option<i64>,
    },
    /// Every attempt of a run.
    Attempts {
        /// Run id.
        id: String,
    },
    /// Print a run's events as they happen until it ends (exit code as `run --wait`).
    Watch {
        /// Run id.
        id: String,
    },
    /// Print a run's container output.
    Logs {
        /// Run id.
        id: String,
        /// Attempt number (default: the current one).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing new output until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `gyoza definitions …`
#[derive(Debug, Subcommand)]
pub enum DefinitionsCommand {
    /// Every version of every definition.
    List,
    /// One definition (the latest version unless --version).
    Get {
        /// Definition name.
        name: String,
        /// A specific version.
        #[arg(long)]
        version: Option<String>,
    },
}

/// `gyoza workers …`
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Workers with their resources, running ops and whether they are active.
    List,
}

/// `gyoza queues …`
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Each queue's fair-share state: weight, PENDING runs (all of them), runs held by
    /// active workers and what they hold, dominant share (largest fraction of the active
    /// cluster's CPU, RAM or VRAM held, divided by the weight) and quotas. --json adds the
    /// decayed usage and its half-life.
    List,
}

/// `gyoza strategies …`
#[derive(Debug, Subcommand)]
pub enum StrategiesCommand {
    /// Loaded scheduling strategies with their statistics.
    List,
    /// Make a loaded strategy the active one.
    Use {
        /// Strategy name.
        name: String,
    },
}

/// `gyoza run`: submit a run from a definition, or an ad-hoc run of an image.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Definition to run (omit with --image for an ad-hoc run).
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    pub definition: Option<String>,
    /// Definition version (default: the latest).
    #[arg(long, requires = "definition")]
    pub version: Option<String>,
    /// Image of an ad-hoc run.
    #[arg(long)]
    pub image: Option<String>,
    /// An input, KEY=VALUE; VALUE is read as JSON when it parses (640, true, [1,2]) and as a
    /// string otherwise. Repeatable; overrides --inputs-file.
    #[arg(short, long = "input", value_name = "KEY=VALUE", value_parser = parse_input)]
    pub inputs: Vec<(String, Value)>,
    /// A JSON file with an object of inputs.
    #[arg(long, value_name = "FILE")]
    pub inputs_file: Option<PathBuf>,
    /// Scheduling priority (>= 0, higher first; default 5).
    #[arg(long)]
    pub priority: Option<i64>,
    /// CPU cores an ad-hoc run needs.
    #[arg(long, requires = "image")]
    pub cpu: Option<u32>,
    /// RAM (MB) an ad-hoc run needs.
    #[arg(long, requires = "image")]
    pub ram_mb: Option<u64>,
    /// VRAM (MB) an ad-hoc run needs.
    #[arg(long, requires = "image")]
    pub vram_mb: Option<u64>,
    /// Attempts in all for an ad-hoc run (retries after failure).
    #[arg(long, requires = "image")]
    pub max_attempts: Option<u32>,
    /// Longest an attempt may run, in seconds (constraints.timeout_s; overrides a
    /// definition's; 0 for none).
    #[arg(long, value_name = "SECONDS")]
    pub timeout_s: Option<u64>,
    /// Longest the run may wait to be claimed, in seconds (constraints.queue_timeout_s;
    /// overrides a definition's; 0 for none).
    #[arg(long, value_name = "SECONDS")]
    pub queue_timeout_s: Option<u64>,
    /// The queue the run is in (overrides a definition's; default `default`).
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// A label, KEY=VALUE, added over a definition's. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Let the run be preempted (stopped and requeued) for a run of higher priority
    /// (overrides a definition's).
    #[arg(long)]
    pub preemptible: bool,
    /// A worker tag the run requires (a GPU run's may be on its GPU). Repeatable; overrides
    /// a definition's.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Wait until the run ends; exit 1 if it FAILED, 3 if CANCELLED.
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Show progress and events until the run ends, then its outputs (exit code as --wait).
    #[arg(long)]
    pub follow: bool,
}

/// `KEY=VALUE` split at its first `=`, the key not empty.
fn key_value(text: &str) -> Result<(&str, &str), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("'{text}' has an empty KEY"));
    }
    Ok((key, value))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = key_value(text)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_input(text: &str) -> Result<(String, Value), String> {
    let (key, value) = key_value(text)?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn run_rows(runs: &[OpRunView]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.to_string(),
                r.op_definition.clone().unwrap_or_else(|| "(ad hoc)".into()),
                r.image.clone(),
                r.priority.to_string(),
                format!("{}%", r.progress),
                r.current_attempt.to_string(),
                table::time(&r.created_at),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "STATE",
            "DEFINITION",
            "IMAGE",
            "PRIORITY",
            "PROGRESS",
            "ATTEMPT",
            "CREATED",
        ],
        &rows,
    )
}

fn run_detail(run: &OpRunView) -> String {
    let summary = &run.execution_summary;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{name:<12} {value}\n"));
        }
    };
    field("id", run.id.clone());
    field("state", run.state.to_string());
    field(
        "definition",
        match (&run.op_definition, &run.op_definition_version) {
            (Some(d), Some(v)) => format!("{d} {v}"),
            (Some(d), None) => d.clone(),
            _ => "(ad hoc)".into(),
        },
    );
    field("image", run.image.clone());
    field("priority", run.priority.to_string());
    field("progress", format!("{}%", run.progress));
    field(
        "attempt",
        format!(
            "{} of {}",
            run.current_attempt, run.retry_policy.max_attempts
        ),
    );
    field("worker", summary.worker_id.clone().unwrap_or_default());
    field(
        "duration",
        summary
            .duration_ms
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_default(),
    );
    field("error", summary.error_message.clone().unwrap_or_default());
    field("created", table::time(&run.created_at));
    field("inputs", Value::Object(run.inputs.clone()).to_string());
    field("outputs", Value::Object(run.outputs.clone()).to_string());
    out
}

fn event_line(event: &Value) -> String {
    format!(
        "{}  {:<9} {}",
        table::time(event["t"].as_str().unwrap_or_default()),
        event["type"].as_str().unwrap_or_default(),
        table::cell(&event["msg"])
    )
}

fn outcome_of(state: &str) -> Outcome {
    match state {
        "FAILED" => Outcome::RunFailed,
        "CANCELLED" => Outcome::RunCancelled,
        _ => Outcome::Done,
    }
}

/// `gyoza runs …`
pub async fn runs(conn: &Connection, command: RunsCommand) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    match command {
        RunsCommand::List {
            state,
            definition,
            image,
            queue,
            label,
            limit,
            starting_after,
            ending_before,
        } => {
            let filter = RunFilter {
                limit: Some(limit),
                state,
                op_definition: definition,
                image,
                queue,
                label,
                starting_after,
                ending_before,
                ..RunFilter::default()
            };
            list_runs(conn, &client, &filter).await?;
        }
        RunsCommand::Get { id } => {
            let run = client.get_run(&id).await?;
            conn.print(&run, || run_detail(&run))?;
        }
        RunsCommand::Cancel { id } => {
            let run = client.cancel_run(&id).await?;
            conn.print(&run, || format!("{} {}\n", run.id, run.state))?;
        }
        RunsCommand::Retry { id } => {
            let run = client.retry_run(&id).await?;
            conn.print(&run, || {
                format!(
                    "{} {} (attempt {})\n",
                    run.id, run.state, run.current_attempt
                )
            })?;
        }
        RunsCommand::Events { id, after } => {
            let events = client.poll_events(&id, after).await?;
            conn.print(&events, || event_rows(&events))?;
        }
        RunsCommand::Attempts { id } => {
            let attempts = client.get_attempts(&id).await?;
            conn.print(&attempts, || attempt_rows(&attempts))?;
        }
        RunsCommand::Watch { id } => return watch_run(conn, &client, &id).await,
        RunsCommand::Logs {
            id,
            attempt,
            follow,
        } => print_logs(&client, &id, attempt, follow).await?,
    }
    Ok(Outcome::Done)
}

/// `gyoza runs list`: a page of runs, and how to get the next one.
async fn list_runs(conn: &Connection, client: &Client, filter: &RunFilter) -> anyhow::Result<()> {
    let page = client.list_runs(filter).await?;
    conn.print(&page, || {
        let mut out = run_rows(&page.data);
        if page.has_more {
            if let Some(last) = page.data.last() {
                out.push_str(&format!("(more: --starting-after {})\n", last.id));
            }
        }
        out
    })
}

fn event_rows(events: &gyoza_core::api::EventsResponse) -> String {
    let rows: Vec<Vec<String>> = events
        .events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                table::time(&e.t),
                e.event_type.to_string(),
                table::cell(&e.msg),
            ]
        })
        .collect();
    let mut out = table::render(&["#", "TIME", "TYPE", "MESSAGE"], &rows);
    // The server answers a page at a time (100 events at most).
    if events.has_more {
        if let Some(last) = events.events.last() {
            out.push_str(&format!(
                "(more: --after {}; {} events in attempt {})\n",
                last.id, events.events_total, events.attempt
            ));
        }
    }
    out
}

fn attempt_rows(attempts: &[gyoza_core::OpAttempt]) -> String {
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let s = &a.execution_summary;
            vec![
                a.attempt.to_string(),
                a.state.to_string(),
                s.worker_id.clone().unwrap_or_default(),
                s.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
                s.error_message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(&["ATTEMPT", "STATE", "WORKER", "MS", "ERROR"], &rows)
}

/// `gyoza runs watch`: the run's events as they happen, until it ends.
async fn watch_run(conn: &Connection, client: &Client, id: &str) -> anyhow::Result<Outcome> {
    let json = conn.json;
    let state = crate::watch::follow(client, id, |event| {
        if json {
            println!("{event}");
        } else {
            println!("{}", event_line(event));
        }
    })
    .await?;
    if !json {
        println!("run {id} ended {state}");
    }
    Ok(outcome_of(&state))
}

/// `gyoza runs logs`: the attempt's container output, streamed on with `follow`.
async fn print_logs(
    client: &Client,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
) -> anyhow::Result<()> {
    if !follow {
        print!("{}", client.logs(id, attempt).await?);
        return Ok(());
    }
    let attempt = attempt.map(|a| a.to_string());
    let mut query = vec![("follow", "true")];
    if let Some(attempt) = &attempt {
        query.push(("attempt", attempt.as_str()));
    }
    let mut response = client.stream(&["runs", id, "logs"], &query, None).await?;
    use std::io::Write as _;
    while let Some(chunk) = response.chunk().await.context("the log stream broke")? {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(())
}

/// `gyoza definitions …`
pub async fn definitions(
    conn: &Connection,
    command: DefinitionsCommand,
) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    match command {
        DefinitionsCommand::List => {
            let definitions = client.list_definitions().await?;
            conn.print(&definitions, || {
                let rows: Vec<Vec<String>> = definitions
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.clone(),
                            d.version.clone(),
                            d.image.clone(),
                            d.input_specs.keys().cloned().collect::<Vec<_>>().join(","),
                            table::time(&gyoza_core::time::to_wire(&d.updated_at)),
                        ]
                    })
                    .collect();
                table::render(&["ID", "VERSION", "IMAGE", "INPUTS", "UPDATED"], &rows)
            })?;
        }
        DefinitionsCommand::Get { name, version } => {
            let definition = client.get_definition(&name, version.as_deref()).await?;
            // A definition reads best as the document it is.
            println!("{}", serde_json::to_string_pretty(&definition)?);
        }
    }
    Ok(Outcome::Done)
}

/// `gyoza workers …`
pub async fn workers(
    conn: &Connection,
    WorkersCommand::List: WorkersCommand,
) -> anyhow::Result<Outcome> {
    let workers = conn.client()?.list_workers().await?;
    conn.print(&workers, || {
        let rows: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                let r = &w.worker.resources;
                let gpus = r
                    .gpus
                    .iter()
                    .map(|g| format!("{}:{}MB", g.id, g.vram_mb))
                    .collect::<Vec<_>>()
                    .join(",");
                vec![
                    w.worker.id.clone(),
                    if w.active { "active" } else { "inactive" }.to_owned(),
                    r.cpu_cores.to_string(),
                    r.ram_mb.to_string(),
                    if gpus.is_empty() { "-".into() } else { gpus },
                    w.worker.running_ops.len().to_string(),
                    table::time(&gyoza_core::time::to_wire(&w.worker.last_heartbeat_at)),
                ]
            })
            .collect();
        table::render(
            &[
                "ID",
                "STATUS",
                "CPU",
                "RAM_MB",
                "GPUS",
                "RUNNING",
                "LAST HEARTBEAT",
            ],
            &rows,
        )
    })?;
    Ok(Outcome::Done)
}

/// `gyoza queues …`
pub async fn queues(
    conn: &Connection,
    QueuesCommand::List: QueuesCommand,
) -> anyhow::Result<Outcome> {
    let list = conn.client()?.queues().await?;
    conn.print(&list, || queues_table(&list))?;
    Ok(Outcome::Done)
}

/// The human table of `gyoza queues list`; a quota is `key=value` pairs, `-` when none.
fn queues_table(list: &QueueList) -> String {
    let rows: Vec<Vec<String>> = list
        .queues
        .iter()
        .map(|q| {
            let quota = [
                ("cpu", q.quota.cpu),
                ("ram_mb", q.quota.ram_mb),
                ("vram_mb", q.quota.vram_mb),
                ("runs", q.quota.runs),
            ]
            .iter()
            .filter_map(|(key, value)| value.map(|v| format!("{key}={v}")))
            .collect::<Vec<_>>()
            .join(",");
            vec![
                q.name.clone(),
                q.weight.to_string(),
                q.pending.to_string(),
                q.running.to_string(),
                q.held.cpu.to_string(),
                q.held.ram_mb.to_string(),
                q.held.vram_mb.to_string(),
                format!("{:.3}", q.share),
                if quota.is_empty() { "-".into() } else { quota },
            ]
        })
        .collect();
    table::render(
        &[
            "NAME", "WEIGHT", "PENDING", "RUNNING", "CPU", "RAM_MB", "VRAM_MB", "SHARE", "QUOTA",
        ],
        &rows,
    )
}

/// `gyoza strategies …`
pub async fn strategies(conn: &Connection, command: StrategiesCommand) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let list = match command {
        StrategiesCommand::List => client.strategies().await?,
        StrategiesCommand::Use { name } => client.activate_strategy(&name).await?,
    };
    conn.print(&list, || strategies_table(&list))?;
    Ok(Outcome::Done)
}

/// The human table of `gyoza strategies`: the active strategy starred.
fn strategies_table(list: &StrategyList) -> String {
    // Latencies as JSON writes them (`1.0`, not `1`), as the table always showed them.
    let ms = |value: Option<f64>| value.map_or_else(String::new, |v| table::cell(&json!(v)));
    let rows: Vec<Vec<String>> = list
        .strategies
        .iter()
        .map(|s| {
            let marker = if s.name == list.active { "*" } else { " " };
            vec![
                format!("{marker} {}", s.name),
                s.wit_version.clone(),
                s.calls.to_string(),
                s.failures.to_string(),
                ms(s.latency_p50_ms),
                ms(s.latency_p99_ms),
                s.sha256.chars().take(12).collect(),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME", "WIT", "CALLS", "FAILURES", "P50_MS", "P99_MS", "SHA256",
        ],
        &rows,
    )
}

/// `gyoza run`
pub async fn run(conn: &Connection, args: RunArgs) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let mut inputs = Map::new();
    if let Some(file) = &args.inputs_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        match serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?
        {
            Value::Object(object) => inputs = object,
            _ => bail!("{} must hold a JSON object of inputs", file.display()),
        }
    }
    inputs.extend(args.inputs);
    let priority = args.priority.unwrap_or(gyoza_core::api::DEFAULT_PRIORITY);
    let labels = (!args.labels.is_empty()).then(|| args.labels.iter().cloned().collect());
    let preemptible = args.preemptible.then_some(true);
    let run = match (&args.definition, &args.image) {
        (Some(definition), _) => {
            let overrides = Constraints {
                timeout_s: args.timeout_s,
                queue_timeout_s: args.queue_timeout_s,
                tags: args.tags.clone(),
                ..Constraints::default()
            };
            let request = OpRunCreateFromDefinition {
                inputs,
                priority,
                constraints: (overrides != Constraints::default()).then_some(overrides),
                queue: args.queue.clone(),
                labels,
                preemptible,
            };
            client
                .create_run_from_definition(definition, args.version.as_deref(), &request)
                .await?
        }
        (None, Some(image)) => {
            let constraints = Constraints {
                cpu: args.cpu,
                ram_mb: args.ram_mb,
                vram_mb: args.vram_mb,
                timeout_s: args.timeout_s,
                queue_timeout_s: args.queue_timeout_s,
                capabilities: Vec::new(),
                tags: args.tags.clone(),
            };
            let request = OpRunCreate {
                image: image.clone(),
                priority,
                inputs,
                constraints: Some(constraints),
                retry_policy: args.max_attempts.map(|max_attempts| RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                }),
                event_delivery: None,
                queue: args.queue.clone(),
                labels,
                preemptible,
            };
            client.create_run(&request).await?
        }
        (None, None) => bail!("name a definition or pass --image"),
    };
    if !args.wait && !args.follow {
        conn.print(&run, || format!("{}\n", run.id))?;
        return Ok(Outcome::Done);
    }
    let state = if args.follow {
        follow_with_progress(&client, &run.id, conn.json).await?
    } else {
        crate::watch::follow(&client, &run.id, |_| {}).await?
    };
    let finished = client.get_run(&run.id).await?;
    conn.print(&finished, || {
        if finished.state == OpRunState::Completed {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&Value::Object(finished.outputs.clone()))
                    .unwrap_or_default()
            )
        } else {
            run_detail(&finished)
        }
    })?;
    Ok(outcome_of(&state))
}

/// Follows a run with a progress bar fed by PROGRESS events; other events are printed as
/// they come (on stderr, so that stdout holds only the outputs).
async fn follow_with_progress(
    client: &Client,
    run_id: &str,
    quiet: bool,
) -> anyhow::Result<String> {
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(100);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    };
    bar.set_message(format!("run {run_id}"));
    let state = crate::watch::follow(client, run_id, |event| {
        if event["type"] == "PROGRESS" {
            bar.set_position(event["msg"].as_u64().unwrap_or(0));
        } else if event["type"] == "RETRIED" {
            bar.set_position(0);
        }
        if quiet {
            return;
        }
        let line = event_line(event);
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    })
    .await?;
    if state == "COMPLETED" {
        bar.set_position(100);
    }
    bar.finish_with_message(format!("run {run_id} {state}"));
    Ok(state)
}
