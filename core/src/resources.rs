//! Value objects shared by definitions, runs and workers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::limits::{self, at_most, bytes_at_most};

/// Hardware an op needs to run, and how long it may wait and run. A missing figure means "no
/// requirement".
///
/// The timeouts live here (not at the top of a definition or run) because constraints already
/// travel everywhere a run goes — definition → run → each attempt → a claim's answer to the
/// worker — so a worker and every server replica see them without a new field on the wire.
/// Both are whole seconds; `0` means "none", like leaving the field out, so that a run made
/// from a definition can drop the definition's timeout (`{"constraints": {"timeout_s": 0}}`).
/// Both are new and optional: a document or a client without them means no timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Constraints {
    /// CPU cores.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// RAM in megabytes.
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// VRAM in megabytes, on one GPU.
    #[serde(default)]
    pub vram_mb: Option<u64>,
    /// Longest an attempt may run, in seconds from its container's start: the worker stops
    /// the container at the limit and the attempt FAILS with `timed out after N s` (retried
    /// per the retry policy); the server fails a RUNNING attempt past the limit plus its grace
    /// (`GYOZA_TIMEOUT_GRACE`) even when its worker does not. `0` or absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Longest a PENDING attempt may wait to be claimed, in seconds from when it became
    /// claimable (the run's creation, or its last requeue once any retry backoff is over):
    /// past it the run FAILS for good with `not started within N s` (no retry). `0` or
    /// absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_s: Option<u64>,
    /// Linux capabilities the op's container needs back (every op container starts with all
    /// of them dropped), by name (`NET_BIND_SERVICE`; a `CAP_` prefix is accepted). A worker
    /// grants only those its operator allows (`--allow-capabilities`); an attempt asking for
    /// more FAILS on it with a message naming them. Empty or absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Worker tags the run requires, all of them: a worker without one of them never gets
    /// it (the server filters before any scheduling strategy sees the run). For a run that
    /// needs VRAM, a tag may be met by the GPU it is placed on instead of the worker. Empty
    /// or absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// The Linux capabilities a run may ask for (`capabilities(7)`, without `CAP_`).
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A capability's name as Docker and [`LINUX_CAPABILITIES`] spell it: upper case, without
/// `CAP_`.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_owned)
        .unwrap_or(upper)
}

impl Constraints {
    /// Every figure beyond its limit (see [`crate::limits`]), for messages.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(cpu) = self.cpu {
            at_most(&mut problems, "constraints.cpu", cpu, limits::MAX_CPU);
        }
        if let Some(ram) = self.ram_mb {
            at_most(&mut problems, "constraints.ram_mb", ram, limits::MAX_RAM_MB);
        }
        if let Some(vram) = self.vram_mb {
            at_most(
                &mut problems,
                "constraints.vram_mb",
                vram,
                limits::MAX_VRAM_MB,
            );
        }
        if let Some(timeout) = self.timeout_s {
            at_most(
                &mut problems,
                "constraints.timeout_s",
                timeout,
                limits::MAX_TIMEOUT_S,
            );
        }
        if let Some(timeout) = self.queue_timeout_s {
            at_most(
                &mut problems,
                "constraints.queue_timeout_s",
                timeout,
                limits::MAX_TIMEOUT_S,
            );
        }
        tag_problems(&mut problems, "constraints.tags", &self.tags);
        at_most(
            &mut problems,
            "constraints.capabilities (entries)",
            self.capabilities.len(),
            LINUX_CAPABILITIES.len(),
        );
        for name in self.capabilities.iter().take(LINUX_CAPABILITIES.len()) {
            if !LINUX_CAPABILITIES.contains(&capability_name(name).as_str()) {
                let shown: String = name.chars().take(64).collect();
                problems.push(format!(
                    "constraints.capabilities: '{shown}' is not a Linux capability (name them one by one, e.g. NET_BIND_SERVICE; ALL is not granted)"
                ));
            }
        }
        problems
    }

    /// The capabilities asked for, in Docker's spelling, each once.
    pub fn capability_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .capabilities
            .iter()
            .map(|c| capability_name(c))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The run timeout in seconds, if there is one (`0` means none).
    pub fn timeout(&self) -> Option<u64> {
        self.timeout_s.filter(|s| *s > 0)
    }

    /// The queue timeout in seconds, if there is one (`0` means none).
    pub fn queue_timeout(&self) -> Option<u64> {
        self.queue_timeout_s.filter(|s| *s > 0)
    }

    /// These constraints with every figure `overrides` sets replacing this one's (a run made
    /// from a definition may override the definition's constraints one by one).
    pub fn overridden_by(&self, overrides: &Constraints) -> Constraints {
        Constraints {
            cpu: overrides.cpu.or(self.cpu),
            ram_mb: overrides.ram_mb.or(self.ram_mb),
            vram_mb: overrides.vram_mb.or(self.vram_mb),
            timeout_s: overrides.timeout_s.or(self.timeout_s),
            queue_timeout_s: overrides.queue_timeout_s.or(self.queue_timeout_s),
            capabilities: if overrides.capabilities.is_empty() {
                self.capabilities.clone()
            } else {
                overrides.capabilities.clone()
            },
            tags: if overrides.tags.is_empty() {
                self.tags.clone()
            } else {
                overrides.tags.clone()
            },
        }
    }
}

/// A number of seconds as a duration; one beyond chrono's range (only a document stored
/// before the limits could hold one) is the longest duration.
pub fn seconds(s: u64) -> chrono::Duration {
    i64::try_from(s)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX)
}

/// How a failed run is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts in all, the first included (so 1 means "never retry").
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long a failed run waits before its next attempt may be claimed.
    #[serde(default)]
    pub backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_ms: 0,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy; `max_attempts` of 0 would make a run that can never run.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry_policy.max_attempts must be >= 1".to_owned());
        }
        Ok(())
    }

    /// Every figure beyond its limit (see [`crate::limits`]), for messages.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        at_most(
            &mut problems,
            "retry_policy.max_attempts",
            self.max_attempts,
            limits::MAX_ATTEMPTS,
        );
        at_most(
            &mut problems,
            "retry_policy.backoff_ms",
            self.backoff_ms,
            limits::MAX_BACKOFF_MS,
        );
        problems
    }

    /// How long a failed attempt waits before the next may be claimed.
    pub fn backoff(&self) -> chrono::Duration {
        i64::try_from(self.backoff_ms)
            .ok()
            .and_then(chrono::Duration::try_milliseconds)
            .unwrap_or(chrono::Duration::MAX)
    }
}

/// Where a run's events are published, and with what extra attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventDelivery {
    /// Topic to publish events to; empty means "do not publish".
    #[serde(default)]
    pub topic: String,
    /// Extra metadata attached to each published event.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: Map<String, Value>,
}

impl EventDelivery {
    /// Every string beyond its limit, for messages.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        bytes_at_most(
            &mut problems,
            "event_delivery.topic",
            &self.topic,
            limits::MAX_TOPIC_BYTES,
        );
        problems
    }
}

/// One GPU of a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    /// Device index on its host.
    pub id: u32,
    /// Total VRAM in megabytes.
    pub vram_mb: u64,
    /// Free-form capability tags (e.g. `cuda`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The hardware a worker offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU cores.
    pub cpu_cores: u32,
    /// RAM in megabytes.
    pub ram_mb: u64,
    /// GPUs, if any.
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

impl Resources {
    /// Every figure beyond its limit (see [`crate::limits`]), for messages.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        at_most(
            &mut problems,
            "resources.cpu_cores",
            self.cpu_cores,
            limits::MAX_CPU,
        );
        at_most(
            &mut problems,
            "resources.ram_mb",
            self.ram_mb,
            limits::MAX_RAM_MB,
        );
        at_most(
            &mut problems,
            "resources.gpus (count)",
            self.gpus.len(),
            limits::MAX_GPUS,
        );
        for gpu in &self.gpus {
            let field = format!("resources.gpus[id={}]", gpu.id);
            at_most(
                &mut problems,
                &format!("{field}.vram_mb"),
                gpu.vram_mb,
                limits::MAX_VRAM_MB,
            );
            tag_problems(&mut problems, &format!("{field}.tags"), &gpu.tags);
        }
        problems
    }
}

/// Problems of a tag list: too many tags, or a tag too long.
pub fn tag_problems(problems: &mut Vec<String>, field: &str, tags: &[String]) {
    at_most(
        problems,
        &format!("{field} (count)"),
        tags.len(),
        limits::MAX_TAGS,
    );
    for tag in tags {
        bytes_at_most(
            problems,
            &format!("{field} entry"),
            tag,
            limits::MAX_TAG_BYTES,
        );
    }
}

/// The queue a definition or run without one is in.
pub const DEFAULT_QUEUE: &str = "default";

/// Free-form string labels of a definition or run (`team: vision`), shown, filtered on
/// (`GET /runs?label=team:vision`) and handed to scheduling strategies.
pub type Labels = BTreeMap<String, String>;

/// [`DEFAULT_QUEUE`], as a serde default.
pub fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// Whether `c` may be part of a queue name or label key (`key_extra` also allows `/`).
fn name_char(c: char, key_extra: bool) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (key_extra && c == '/')
}

/// What is wrong with queue name `queue` and with `labels`, each problem in words.
pub fn queueing_problems(queue: &str, labels: &Labels) -> Vec<String> {
    let mut problems = Vec::new();
    queue_problems(&mut problems, queue);
    label_problems(&mut problems, labels);
    problems
}

/// Adds what is wrong with queue name `queue` to `problems`.
fn queue_problems(problems: &mut Vec<String>, queue: &str) {
    if queue.is_empty() {
        problems.push("queue must not be empty".to_owned());
    } else if !queue.chars().all(|c| name_char(c, false)) {
        problems.push(format!(
            "queue '{}' may hold only letters, digits, '-', '_' and '.'",
            queue.escape_debug()
        ));
    }
    bytes_at_most(problems, "queue", queue, limits::MAX_QUEUE_BYTES);
}

/// Adds what is wrong with `labels` (their number, each key and value) to `problems`.
fn label_problems(problems: &mut Vec<String>, labels: &Labels) {
    at_most(
        problems,
        "labels (entries)",
        labels.len(),
        limits::MAX_LABELS,
    );
    for (key, value) in labels.iter().take(limits::MAX_LABELS + 1) {
        label_problem(problems, key, value);
    }
}

/// Adds what is wrong with the label `key`: `value` to `problems`.
pub fn label_problem(problems: &mut Vec<String>, key: &str, value: &str) {
    if key.is_empty() {
        problems.push("a label key must not be empty".to_owned());
    } else if !key.chars().all(|c| name_char(c, true)) {
        problems.push(format!(
            "label key '{}' may hold only letters, digits, '-', '_', '.' and '/'",
            key.escape_debug()
        ));
    }
    bytes_at_most(problems, "a label key", key, limits::MAX_LABEL_KEY_BYTES);
    if value.chars().any(char::is_control) {
        problems.push(format!(
            "label '{}': its value must not hold control characters",
            key.escape_debug()
        ));
    }
    bytes_at_most(
        problems,
        &format!("label '{}'", key.escape_debug()),
        value,
        limits::MAX_LABEL_VALUE_BYTES,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_linux_ones_by_name_and_each_is_asked_once() {
        let asking = |names: &[&str]| Constraints {
            capabilities: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Constraints::default()
        };
        let ok = asking(&["cap_chown", "NET_BIND_SERVICE", "CHOWN"]);
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert_eq!(ok.capability_names(), vec!["CHOWN", "NET_BIND_SERVICE"]);
        for bad in ["ALL", "", "CAP_", "NOT_ONE"] {
            let problems = asking(&[bad]).problems();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].contains("is not a Linux capability"),
                "{problems:?}"
            );
        }
        // A run may replace the definition's capabilities, not add to them.
        let definition = asking(&["CHOWN"]);
        assert_eq!(
            definition
                .overridden_by(&Constraints::default())
                .capabilities,
            ["CHOWN"]
        );
        assert_eq!(
            definition.overridden_by(&asking(&["KILL"])).capabilities,
            ["KILL"]
        );
    }
}
