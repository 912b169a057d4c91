//! The Docker engine, as the pipeline needs it: images, and one container run at a time.
//!
//! Everything that touches `bollard` lives here. Containers run with `init: true` (so that an
//! op's shell gets a real PID 1 that forwards SIGTERM: busybox `sh` ignores it as PID 1), with
//! the run's limits, labelled with the run and worker so that leftovers of a crashed worker
//! can be found and removed.
//!
//! The engine may be unreachable — at the worker's start, or at any moment after. [`Engine`]
//! therefore connects lazily: [`Engine::check`] (called before every claim) agrees on an API
//! version once the engine first answers, and a failure of a request is classified as either
//! the engine's answer (a problem of the run: bad image, bad limits…) or the engine being
//! unreachable ([`RunFailure::engine_unreachable`]), which the pipeline answers by handing the
//! run back rather than failing it. Containers that could not be removed while the engine was
//! away are removed when it answers again.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, RwLock};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use gyoza_core::sync::{lock, read, write};

use crate::WorkerError;
use crate::config::PullPolicy;

/// Label carrying the run id on each container the worker starts.
pub const RUN_LABEL: &str = "gyoza.run_id";
/// Label carrying the worker id on each container the worker starts.
pub const WORKER_LABEL: &str = "gyoza.worker_id";

/// A Docker engine, reachable or not.
#[derive(Debug)]
pub struct Engine {
    /// The configured address (`None`: bollard's defaults, which read `DOCKER_HOST`).
    host: Option<String>,
    /// The client speaking the engine's API version, once the engine has answered.
    negotiated: RwLock<Option<Docker>>,
    /// The address, for messages.
    address: String,
    /// Containers that could not be removed because the engine was unreachable.
    orphans: Mutex<BTreeSet<String>>,
}

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (where event lines are read).
    Stdout,
    /// Standard error.
    Stderr,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Container name (unique per run attempt).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// `host:container[:mode]` bind mounts.
    pub binds: Vec<String>,
    /// Memory limit in MB (also the memory+swap limit: no swap).
    pub memory_mb: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<u32>,
    /// GPU to expose (by index), for runs that asked for VRAM.
    pub gpu: Option<u32>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Limits every op container gets.
    pub sandbox: Sandbox,
    /// Capabilities given back to this container (all others are dropped); already checked
    /// against [`Sandbox::allowed_capabilities`].
    pub capabilities: Vec<String>,
}

/// What every op container is confined to, whatever its image asks (worker settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Most processes (and threads) the container may have at once (`--pids-limit`).
    pub pids_limit: i64,
    /// Docker network the container joins (`bridge`, `none`, or a network's name).
    pub network: String,
    /// Memory limit of a run that states no `ram_mb`, in MB (0: none).
    pub default_memory_mb: u64,
    /// Capabilities a run may ask back (`--allow-capabilities`), in Docker's spelling.
    pub allowed_capabilities: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            pids_limit: 512,
            network: "bridge".into(),
            default_memory_mb: 2048,
            allowed_capabilities: Vec::new(),
        }
    }
}

impl Sandbox {
    /// Why this worker does not run an op asking for `asked` (capability names in Docker's
    /// spelling): the ones it does not grant, named with what it does grant.
    pub fn refusal(&self, asked: &[String]) -> Option<String> {
        let missing: Vec<&str> = asked
            .iter()
            .filter(|c| !self.allowed_capabilities.contains(c))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let granted = if self.allowed_capabilities.is_empty() {
            "none".to_owned()
        } else {
            self.allowed_capabilities.join(", ")
        };
        Some(format!(
            "the run asks for capabilities this worker does not grant: {} (it grants: {granted}; \
             an operator allows more with --allow-capabilities / GYOZA_WORKER_ALLOW_CAPABILITIES)",
            missing.join(", ")
        ))
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit code of its main process (137 when killed).
    pub exit_code: i64,
    /// Whether the kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Whether the worker stopped it (cancellation or shutdown).
    pub stopped: bool,
}

/// A failure of the engine while running a container, worded for the run's error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    /// What went wrong, for the run's error message.
    pub message: String,
    /// The engine could not be reached (no answer at all), as opposed to an engine that
    /// answered with an error: the run is not at fault and should be handed back.
    pub engine_unreachable: bool,
}

impl RunFailure {
    /// A failure that is the run's (the engine answered, but with an error).
    fn of_run(message: String) -> Self {
        Self {
            message,
            engine_unreachable: false,
        }
    }

    /// A failure of `context` with bollard's error `e`, classified.
    fn of(context: &str, e: &BollardError) -> Self {
        if is_unreachable(e) {
            Self {
                message: format!("the Docker engine became unreachable ({context}): {e}"),
                engine_unreachable: true,
            }
        } else {
            Self::of_run(format!("{context}: {}", docker_message(e)))
        }
    }
}

fn docker_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Whether `e` says that no answer came from the engine (connection refused or broken, socket
/// missing, timeout), rather than that the engine answered with an error.
pub fn is_unreachable(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::IOError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HttpClientError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
    )
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `repo[:tag]` → (`repo`, `tag`), the tag defaulting to `latest`; a digest stays whole in
/// the repository part (the engine takes `repo@sha256:…` as is).
pub fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_owned(), String::new());
    }
    // A ':' after the last '/' is a tag; one before it is a registry port.
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let split = name_start + i;
            (image[..split].to_owned(), image[split + 1..].to_owned())
        }
        None => (image.to_owned(), "latest".to_owned()),
    }
}

impl Engine {
    /// A client of the engine at `host` (`unix://…`, `tcp://…`), or as `DOCKER_HOST` says
    /// (default: the local socket). Nothing is sent yet: only a malformed address fails here.
    pub fn new(host: Option<&str>) -> Result<Self, WorkerError> {
        let address = host
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let engine = Self {
            host: host.map(str::to_owned),
            negotiated: RwLock::new(None),
            address,
            orphans: Mutex::new(BTreeSet::new()),
        };
        // bollard checks that a Unix socket exists when it makes the client: a missing one is
        // an engine that is not there yet, not a bad address.
        match engine.connect() {
            Ok(_) | Err(BollardError::SocketNotFoundError(_)) => Ok(engine),
            Err(source) => Err(WorkerError::Docker {
                context: format!("cannot use the Docker engine address '{}'", engine.address),
                source,
            }),
        }
    }

    /// A new client for the configured address (no request sent).
    fn connect(&self) -> Result<Docker, BollardError> {
        match &self.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
    }

    /// The engine's address, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The negotiated client, or (before the engine first answered) a new one.
    fn docker(&self) -> Result<Docker, BollardError> {
        let negotiated = read(&self.negotiated).clone();
        negotiated.map_or_else(|| self.connect(), Ok)
    }

    /// Whether the engine answers now. The first time it does, the client agrees on an API
    /// version with it (an older engine refuses requests in a newer version); every time it
    /// does, containers it could not remove while unreachable are removed. The error is a
    /// message for the log.
    pub async fn check(&self) -> Result<(), String> {
        let negotiated = read(&self.negotiated).clone();
        let answer = match negotiated {
            Some(docker) => docker.ping().await.map(drop),
            None => match self.connect() {
                Ok(base) => base.negotiate_version().await.map(|docker| {
                    *write(&self.negotiated) = Some(docker);
                }),
                Err(e) => Err(e),
            },
        };
        answer.map_err(|e| {
            format!(
                "cannot reach the Docker engine at {} (is dockerd running? set DOCKER_HOST to its address): {e}",
                self.address
            )
        })?;
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        for name in orphans {
            tracing::warn!(container = %name, "removing a container left while the Docker engine was unreachable (its run was handed back)");
            self.remove(&name).await;
        }
        Ok(())
    }

    /// Makes sure `image` is present as `policy` says; the error is a message for the run.
    pub async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RunFailure> {
        let context = format!("cannot inspect image '{image}'");
        let docker = self.docker().map_err(|e| RunFailure::of(&context, &e))?;
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(RunFailure::of(&context, &e)),
        };
        match (policy, present) {
            (PullPolicy::Missing, true) | (PullPolicy::Never, true) => Ok(()),
            (PullPolicy::Never, false) => Err(RunFailure::of_run(format!(
                "image '{image}' is not present on this worker and the worker does not pull \
                 images (--pull never): build or load it on the worker, or use --pull missing"
            ))),
            (PullPolicy::Always, _) | (PullPolicy::Missing, false) => {
                match self.pull(image).await {
                    Ok(()) => Ok(()),
                    Err(failure) if failure.engine_unreachable => Err(failure),
                    Err(failure) if present => {
                        tracing::warn!(image, error = %failure.message, "pull failed; using the local copy");
                        Ok(())
                    }
                    Err(failure) => Err(RunFailure::of_run(format!(
                        "image '{image}' is not present on this worker and could not be pulled: \
                         {} (check the image name, or build/load it on the worker)",
                        failure.message
                    ))),
                }
            }
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RunFailure> {
        let (repo, tag) = split_image(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(&repo);
        if !tag.is_empty() {
            options = options.tag(&tag);
        }
        tracing::info!(image, "pulling image");
        let context = format!("pulling image '{image}'");
        let docker = self.docker().map_err(|e| RunFailure::of(&context, &e))?;
        let mut progress = docker.create_image(Some(options.build()), None, None);
        while let Some(step) = progress.next().await {
            match step {
                Ok(info) => {
                    if let Some(error) = info.error_detail.and_then(|d| d.message) {
                        return Err(RunFailure::of_run(error));
                    }
                }
                Err(e) if is_unreachable(&e) => return Err(RunFailure::of(&context, &e)),
                Err(e) => return Err(RunFailure::of_run(docker_message(&e))),
            }
        }
        Ok(())
    }

    /// Removes the containers a previous life of worker `worker_id` left behind.
    pub async fn remove_leftovers(&self, worker_id: &str) {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{WORKER_LABEL}={worker_id}")],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let listed = match self.docker() {
            Ok(docker) => docker.list_containers(Some(options)).await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(containers) => {
                for container in containers {
                    if let Some(id) = container.id {
                        tracing::warn!(container = %id, "removing a container left by an earlier run of this worker");
                        self.remove(&id).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list leftover containers"),
        }
    }

    /// Removes a container, running or not; a missing one is fine. One that cannot be removed
    /// because the engine is unreachable is removed when [`Engine::check`] next succeeds.
    pub async fn remove(&self, name: &str) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = match self.docker() {
            Ok(docker) => docker.remove_container(name, Some(options)).await,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) if is_unreachable(&e) => {
                tracing::warn!(container = name, error = %e, "cannot remove container: the Docker engine is unreachable; will remove it when it answers again");
                lock(&self.orphans).insert(name.to_owned());
            }
            Err(e) => tracing::warn!(container = name, error = %e, "cannot remove container"),
        }
    }

    /// Runs `spec` to its end: every line of output goes to `on_line` as it comes; when
    /// `stop` completes first the container is stopped (SIGTERM, SIGKILL after
    /// `stop_timeout_s`). The container is removed afterwards, whatever happened.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        stop_timeout_s: u32,
        on_line: &mut (dyn FnMut(Stream, String) + Send),
        stop: impl Future<Output = ()>,
    ) -> Result<ContainerExit, RunFailure> {
        // A container of the same name is a leftover of an earlier try of this attempt.
        self.remove(&spec.name).await;
        let result = self.run_inner(spec, stop_timeout_s, on_line, stop).await;
        self.remove(&spec.name).await;
        result
    }

    async fn run_inner(
        &self,
        spec: &ContainerSpec,
        stop_timeout_s: u32,
        on_line: &mut (dyn FnMut(Stream, String) + Send),
        stop: impl Future<Output = ()>,
    ) -> Result<ContainerExit, RunFailure> {
        let docker = self
            .docker()
            .map_err(|e| RunFailure::of("cannot create the container", &e))?;
        let mut output = create_and_start(&docker, spec).await?;
        let mut stopping = Stopping {
            stop: std::pin::pin!(stop),
            stopped: false,
        };
        self.stream_output(spec, stop_timeout_s, &mut output, on_line, &mut stopping)
            .await;
        // The stream also ends if the connection broke: wait for the real end. bollard reports
        // a non-zero exit code as an error; that is an outcome, not a failure of the wait.
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waiting = docker.wait_container(&spec.name, Some(wait));
        loop {
            tokio::select! {
                next = waiting.next() => match next {
                    Some(Ok(_)) | None | Some(Err(BollardError::DockerContainerWaitError { .. })) => break,
                    Some(Err(e)) => return Err(RunFailure::of("lost track of the running container", &e)),
                },
                () = &mut stopping.stop, if !stopping.stopped => {
                    stopping.stopped = true;
                    self.stop(&spec.name, stop_timeout_s).await;
                }
            }
        }
        let inspected = docker
            .inspect_container(&spec.name, None)
            .await
            .map_err(|e| RunFailure::of("cannot inspect the finished container", &e))?;
        let state = inspected.state.unwrap_or_default();
        Ok(ContainerExit {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
            stopped: stopping.stopped,
        })
    }

    /// Hands every line of `output` to `on_line` until the stream ends, stopping the
    /// container if `stopping` says so meanwhile.
    async fn stream_output<S>(
        &self,
        spec: &ContainerSpec,
        stop_timeout_s: u32,
        output: &mut Output,
        on_line: &mut (dyn FnMut(Stream, String) + Send),
        stopping: &mut Stopping<'_, S>,
    ) where
        S: Future<Output = ()>,
    {
        let mut stdout = crate::events::LineSplitter::default();
        let mut stderr = crate::events::LineSplitter::default();
        loop {
            tokio::select! {
                chunk = output.next() => match chunk {
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        for line in stdout.push(&message) { on_line(Stream::Stdout, line); }
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        for line in stderr.push(&message) { on_line(Stream::Stderr, line); }
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        tracing::warn!(container = %spec.name, error = %e, "output stream broke; waiting for the container");
                        break;
                    }
                    None => break,
                },
                () = &mut stopping.stop, if !stopping.stopped => {
                    stopping.stopped = true;
                    self.stop(&spec.name, stop_timeout_s).await;
                }
            }
        }
        if let Some(line) = stdout.finish() {
            on_line(Stream::Stdout, line);
        }
        if let Some(line) = stderr.finish() {
            on_line(Stream::Stderr, line);
        }
    }

    async fn stop(&self, name: &str, timeout_s: u32) {
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(timeout_s).unwrap_or(i32::MAX))
            .build();
        let stopped = match self.docker() {
            Ok(docker) => docker.stop_container(name, Some(options)).await,
            Err(e) => Err(e),
        };
        match stopped {
            Ok(()) => tracing::info!(container = name, "container stopped"),
            // 304: it had already stopped; 404: already gone.
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => {
                tracing::warn!(container = name, error = %e, "cannot stop container; killing it");
                self.remove(name).await;
            }
        }
    }
}

/// The attached output stream of a container.
type Output =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// The stop request of a running container, and whether it was acted on.
struct Stopping<'a, S> {
    stop: std::pin::Pin<&'a mut S>,
    stopped: bool,
}

/// Creates `spec`'s container, attaches to its output and starts it.
async fn create_and_start(docker: &Docker, spec: &ContainerSpec) -> Result<Output, RunFailure> {
    let options = CreateContainerOptionsBuilder::default()
        .name(&spec.name)
        .build();
    docker
        .create_container(Some(options), create_body(spec))
        .await
        .map_err(|e| RunFailure::of("cannot create the container", &e))?;
    // Attach before starting, so that not a line of output is missed. Without `logs`:
    // replaying the log as well as streaming it delivered a fast container's first lines
    // twice (seen: its first INFO and PROGRESS events recorded twice), and before the
    // start there is no log to replay.
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .logs(false)
        .build();
    let output = docker
        .attach_container(&spec.name, Some(attach))
        .await
        .map_err(|e| RunFailure::of("cannot attach to the container", &e))?
        .output;
    docker
        .start_container(&spec.name, None)
        .await
        .map_err(|e| RunFailure::of("cannot start the container", &e))?;
    Ok(output)
}

/// The engine's description of `spec`'s container: its image, environment, labels and limits.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let memory = spec
        .memory_mb
        .or(Some(spec.sandbox.default_memory_mb))
        .filter(|mb| *mb > 0)
        .map(|mb| i64::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
    let host_config = HostConfig {
        init: Some(true),
        binds: Some(spec.binds.clone()),
        // The sandbox: no capabilities (but those the run asked for and the worker allows),
        // no privilege gain through setuid binaries, a bounded
        // number of processes, the worker's chosen network.
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!spec.capabilities.is_empty()).then(|| spec.capabilities.clone()),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        pids_limit: Some(spec.sandbox.pids_limit),
        network_mode: Some(spec.sandbox.network.clone()),
        memory,
        // Equal to `memory`: a run that exceeds its RAM is killed, not swapped.
        memory_swap: memory,
        nano_cpus: spec
            .cpus
            .filter(|c| *c > 0)
            .map(|c| i64::from(c) * 1_000_000_000),
        device_requests: spec.gpu.map(|gpu| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(vec![gpu.to_string()]),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..DeviceRequest::default()
            }]
        }),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_grants_only_the_capabilities_it_allows() {
        let mut sandbox = Sandbox::default();
        let refusal = sandbox.refusal(&["CHOWN".into()]).expect("refused");
        assert!(
            refusal.contains("does not grant: CHOWN (it grants: none;"),
            "{refusal}"
        );
        assert_eq!(sandbox.refusal(&[]), None);
        sandbox.allowed_capabilities = vec!["CHOWN".into(), "KILL".into()];
        assert_eq!(sandbox.refusal(&["CHOWN".into()]), None);
        let refusal = sandbox
            .refusal(&["CHOWN".into(), "SYS_ADMIN".into()])
            .expect("refused");
        assert!(
            refusal.contains("does not grant: SYS_ADMIN (it grants: CHOWN, KILL;"),
            "{refusal}"
        );
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        let split = |s| split_image(s);
        assert_eq!(split("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split("gyoza-example/echo:1"),
            ("gyoza-example/echo".into(), "1".into())
        );
        assert_eq!(
            split("registry:5000/team/op"),
            ("registry:5000/team/op".into(), "latest".into())
        );
        assert_eq!(
            split("registry:5000/team/op:2.1"),
            ("registry:5000/team/op".into(), "2.1".into())
        );
        assert_eq!(
            split("op@sha256:abc"),
            ("op@sha256:abc".into(), String::new())
        );
    }
}
