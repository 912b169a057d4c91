//! The largest value each number and string of the API may take.
//!
//! Every figure a client sends is bounded here, so that no arithmetic of the domain (free
//! capacity, backoff deadlines, attempt counts) can overflow, and a value that makes no sense
//! for a job scheduler (a run that needs an exbibyte of RAM, a backoff of 285 000 years, a 200 KB
//! image name) is refused at the door with a 400 that names the field and its limit, instead of
//! being stored and failing later. The limits are far above any real machine or op.
//!
//! The domain code still uses checked or saturating arithmetic everywhere: documents stored
//! before these limits existed may hold larger values.

/// CPU cores a run may need or a worker may offer.
pub const MAX_CPU: u32 = 4_096;
/// RAM in megabytes a run may need or a worker may offer (1 PiB).
pub const MAX_RAM_MB: u64 = 1 << 30;
/// VRAM in megabytes a run may need or one GPU may have (16 TiB).
pub const MAX_VRAM_MB: u64 = 1 << 24;
/// GPUs one worker may report.
pub const MAX_GPUS: usize = 256;
/// Milliseconds a claim may wait for something to claim (`?wait_ms=`).
pub const MAX_CLAIM_WAIT_MS: u64 = 60_000;
/// Runs one `POST /runs/batch` may create.
pub const MAX_BATCH_RUNS: usize = 1_000;
/// Events one `POST /workers/{id}/events` may carry.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// Attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 1_000;
/// A retry policy's backoff in milliseconds (30 days).
pub const MAX_BACKOFF_MS: u64 = 30 * 24 * 3_600 * 1_000;
/// The highest priority (the largest 32-bit signed integer).
pub const MAX_PRIORITY: i64 = 2_147_483_647;
/// Bytes of a Docker image reference.
pub const MAX_IMAGE_BYTES: usize = 1_024;
/// Bytes of an id: a definition's, a worker's.
pub const MAX_ID_BYTES: usize = 256;
/// Bytes of a definition's version.
pub const MAX_VERSION_BYTES: usize = 128;
/// Bytes of an event delivery topic URL.
pub const MAX_TOPIC_BYTES: usize = 2_048;
/// Tags one worker or GPU may have, and bytes of each.
pub const MAX_TAGS: usize = 64;
/// Bytes of a queue name at most.
pub const MAX_QUEUE_BYTES: usize = 64;
/// Labels on a definition or run at most.
pub const MAX_LABELS: usize = 32;
/// Bytes of a label key at most.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// Bytes of a label value at most.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Bytes of one tag.
pub const MAX_TAG_BYTES: usize = 256;
/// Seconds of a run's timeout or queue timeout (`constraints.timeout_s`,
/// `constraints.queue_timeout_s`): one year, far beyond any op, and far from the end of a
/// timestamp's range when added to one.
pub const MAX_TIMEOUT_S: u64 = 366 * 24 * 3_600;
/// Running ops one heartbeat may report (each one the server cannot match costs it a read).
pub const MAX_RUNNING_OPS: usize = 10_000;
/// Bytes of one INFO, PROGRESS or ERROR event: its `msg` and `payload` as JSON (64 KiB). State
/// events (STARTED, COMPLETED, FAILED, CANCELLED, RETRIED) carry outputs and error messages and
/// happen once per attempt: only the request body limit bounds them.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// INFO, PROGRESS and ERROR events one attempt may record; beyond, they are refused (400).
/// State events are always accepted.
pub const MAX_EVENTS_PER_ATTEMPT: u64 = 10_000;
/// Events of a run's timeline (its last, across attempts) that `GET /runs/{id}` and the
/// answers of run changes show; `GET /runs/{id}/events` pages through all of them.
pub const RUN_VIEW_EVENTS: usize = 100;
/// Events of each run's timeline that `GET /runs` shows.
pub const RUN_LIST_EVENTS: usize = 10;
/// Events one page of `GET /runs/{id}/events` holds at most (and by default).
pub const MAX_EVENT_PAGE: usize = 100;

/// Adds "`field` must be at most `limit`, got `value`" to `problems` when `value > limit`.
pub fn at_most<T: PartialOrd + std::fmt::Display>(
    problems: &mut Vec<String>,
    field: &str,
    value: T,
    limit: T,
) {
    if value > limit {
        problems.push(format!("{field} must be at most {limit}, got {value}"));
    }
}

/// Adds "`field` must be at most `limit` bytes, got `n`" to `problems` when `text` is longer.
pub fn bytes_at_most(problems: &mut Vec<String>, field: &str, text: &str, limit: usize) {
    if text.len() > limit {
        problems.push(format!(
            "{field} must be at most {limit} bytes, got {}",
            text.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_the_limit_and_the_value() {
        let mut problems = Vec::new();
        at_most(&mut problems, "constraints.cpu", 5_000, MAX_CPU);
        at_most(&mut problems, "constraints.ram_mb", MAX_RAM_MB, MAX_RAM_MB);
        bytes_at_most(&mut problems, "image", &"x".repeat(2_000), MAX_IMAGE_BYTES);
        assert_eq!(
            problems,
            [
                "constraints.cpu must be at most 4096, got 5000",
                "image must be at most 1024 bytes, got 2000"
            ]
        );
    }

    #[test]
    fn the_limits_keep_domain_sums_far_from_overflow() {
        // A million held runs at the RAM limit still fit an i64 of megabytes.
        assert!(
            i64::try_from(MAX_RAM_MB)
                .unwrap()
                .checked_mul(1_000_000)
                .is_some()
        );
        // The longest backoff is a valid chrono duration and far from Timestamp's range end.
        let backoff = chrono::Duration::try_milliseconds(MAX_BACKOFF_MS as i64).unwrap();
        assert!(chrono::Utc::now().checked_add_signed(backoff).is_some());
        // So is the longest timeout, with a grace of a year on top.
        let timeout = chrono::Duration::try_seconds(2 * MAX_TIMEOUT_S as i64).unwrap();
        assert!(chrono::Utc::now().checked_add_signed(timeout).is_some());
    }
}
