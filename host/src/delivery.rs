//! Event delivery: a run whose `event_delivery.topic` is an `http://` or `https://` URL has
//! each of its events POSTed there as JSON.
//!
//! # At least once, across restarts and replicas
//! Delivery works from the store, never from memory: the write that appends a run's events
//! marks the run as having events to deliver, atomically with them (the outbox, see
//! [`crate::store`]). Each server process looks for marked runs that are due (at once when
//! this process wrote the change, else every [`DeliveryConfig::poll`]) and, holding a lease
//! on the run in the store, sends its events in order from the saved progress; it saves the
//! progress as it goes (at least every second) and clears the mark only when its progress
//! covers everything the run has stored then. So:
//! - an event committed is delivered even if the server stops before sending it (the next
//!   process, or another replica, resumes from the progress);
//! - one process at a time delivers a run's events, in order (attempt, then index); one
//!   killed mid-delivery leaves its lease to expire ([`DeliveryConfig::lease`]) and events
//!   after its last save are sent again: a receiver deduplicates by `(run_id, attempt,
//!   index)`, which every body carries;
//! - a receiver that fails (a connection error, a timeout, a 5xx, 408, 425 or 429) is tried
//!   again with exponential backoff from [`DeliveryConfig::backoff`] up to
//!   [`DeliveryConfig::max_backoff`], the run's later events waiting behind (in order), until
//!   the event has failed for [`DeliveryConfig::give_up_after`]; then it is given up on,
//!   counted and logged, and the next is sent. Another 4xx is a refusal: given up at once.
//!
//! Delivery never blocks a run: a change only wakes this process's delivery loop.
//!
//! Deliveries in flight are bounded twice: `concurrency` in all, and `per_destination` for
//! each destination (scheme, host and port), so a topic that never answers holds at most its
//! own share of the slots and other topics' events keep flowing. Each destination's checked
//! addresses and HTTP client are kept for [`DESTINATION_TTL`] (one DNS lookup and one
//! connection pool per destination, not per event); the entry goes when its last delivery is
//! done.
//!
//! Each delivery first passes the destination policy ([`crate::destination`]): by default only
//! public addresses are reached (after DNS resolution, pinned for the request), redirects are
//! not followed, and URLs are logged with their credentials redacted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gyoza_core::backoff::Backoff;
use gyoza_core::run::EventType;
use gyoza_core::sync::lock;
use gyoza_core::time::to_micros;
use gyoza_core::{EventEntry, OpAttempt, OpRun, OpRunState};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};

use crate::destination::{DestinationPolicy, redact};
use crate::metrics::Metrics;
use crate::store::{
    DeliveryLease, DeliveryProgress, EventCursor, EventQuery, Store, StoreError, list_events,
};

/// How deliveries are attempted.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Wait before the first retry of an event; doubled for each next one.
    pub backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
    /// How long an event may keep failing before it is given up on.
    pub give_up_after: Duration,
    /// Time limit of one POST.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Deliveries in flight at once to one destination (scheme, host and port).
    pub per_destination: usize,
    /// How often the store is looked at for events to deliver that this process did not
    /// write (other replicas' changes, retries that came due).
    pub poll: Duration,
    /// How long a lease on a run's delivery lasts unless renewed (a process that dies holding
    /// one delays that run's delivery by at most this long).
    pub lease: Duration,
    /// Which destinations may be reached (see [`crate::destination`]).
    pub policy: DestinationPolicy,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 16,
            per_destination: 4,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            policy: DestinationPolicy::default(),
        }
    }
}

/// The JSON body POSTed to a topic URL.
#[derive(Debug, Clone, Serialize)]
pub struct EventMessage {
    /// The run.
    pub run_id: String,
    /// The attempt the event belongs to.
    pub attempt: u32,
    /// The event's index in that attempt's timeline.
    pub index: u64,
    /// The attempt's state after the event.
    pub state: String,
    /// The run's definition, if any.
    pub op_definition: Option<String>,
    /// The event.
    pub event: EventEntry,
    /// `event_delivery.attributes` of the run.
    pub attributes: Map<String, Value>,
}

/// How long a destination's checked addresses and client are reused.
pub const DESTINATION_TTL: Duration = Duration::from_secs(30);

/// Runs this process delivers at once at most (each holds a lease; their POSTs are bounded
/// by the slots).
const MAX_ACTIVE_RUNS: usize = 256;

/// Events read from the store at a time.
const PAGE: usize = 100;

/// How often progress is saved (and the lease renewed) while a run's events are sent.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// One destination's share of the slots and its checked client.
struct Lane {
    slots: Semaphore,
    client: tokio::sync::Mutex<Option<(Instant, reqwest::Client)>>,
}

/// Delivers the events of the store's marked runs (see the module docs).
pub struct Deliverer {
    config: DeliveryConfig,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// This process's name on the leases it takes.
    owner: String,
    /// Slots of all deliveries in flight.
    slots: Arc<Semaphore>,
    /// The destinations with deliveries in flight or waiting.
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// The runs this process is delivering.
    active: Mutex<HashSet<String>>,
    /// Wakes the loop: this process wrote events to deliver.
    wake: Notify,
}

/// Whether `topic` is delivered to: an `http://` or `https://` URL.
pub fn is_url(topic: &str) -> bool {
    topic.starts_with("http://") || topic.starts_with("https://")
}

/// Wall-clock microseconds since the epoch: leases and retry times are the servers' own
/// business, not the domain's.
fn now_us() -> i64 {
    to_micros(&chrono::Utc::now())
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The attempt's state after `event`, from the state before it (`None` before the attempt's
/// first event): a state event's state, a manual change's (`payload.state`), else unchanged
/// (ASSIGNED once the attempt was claimed before the event).
fn state_after(before: Option<OpRunState>, attempt: &OpAttempt, event: &EventEntry) -> OpRunState {
    match event.event_type {
        EventType::Started => OpRunState::Running,
        EventType::Completed => OpRunState::Completed,
        EventType::Failed => OpRunState::Failed,
        EventType::Cancelled => OpRunState::Cancelled,
        EventType::Retried => OpRunState::Pending,
        EventType::Info | EventType::Progress | EventType::Error => {
            let manual = event.payload.get("manual") == Some(&Value::Bool(true));
            let set = event.payload.get("state").and_then(Value::as_str);
            if let Some(state) = set.filter(|_| manual).and_then(|s| s.parse().ok()) {
                return state;
            }
            match before {
                None | Some(OpRunState::Pending)
                    if attempt.assigned_at.is_some_and(|at| at <= event.t) =>
                {
                    OpRunState::Assigned
                }
                None => OpRunState::Pending,
                Some(state) => state,
            }
        }
    }
}

/// How one POST went.
enum Sent {
    Ok,
    /// Given up at once (the policy or the receiver refused): the reason.
    Refused(String),
    /// Worth another try later: the error.
    Failed(String),
}

/// How sending a run's events ended.
enum Walk {
    /// Everything loaded was sent (or given up on).
    Done,
    /// An event failed; try again at this time (microseconds since the epoch).
    RetryAt(i64),
    /// Another process took the lease over.
    LeaseLost,
}

impl Deliverer {
    /// A deliverer of `store`'s marked runs; its loop runs on the current tokio runtime until
    /// the deliverer is dropped.
    pub fn start(
        config: DeliveryConfig,
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            lanes: Mutex::default(),
            active: Mutex::default(),
            wake: Notify::new(),
            owner: crate::store::lease_owner(),
            config,
            metrics,
            store,
        });
        tokio::spawn(run_loop(Arc::downgrade(&this)));
        this
    }

    /// Says that `run` was just written: when its topic is a URL, the loop looks at once.
    pub fn written(&self, run: &OpRun) {
        if is_url(&run.event_delivery.topic) {
            self.wake.notify_one();
        }
    }

    /// Starts delivering every due run this process is not delivering yet.
    async fn look(self: &Arc<Self>) {
        let active = lock(&self.active).len();
        let free = MAX_ACTIVE_RUNS.saturating_sub(active);
        if free == 0 {
            return;
        }
        let due = match self.store.due_deliveries(now_us(), active + free).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for events to deliver; trying again");
                return;
            }
        };
        for run_id in due {
            if !lock(&self.active).insert(run_id.clone()) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let again = match this.deliver(&run_id).await {
                    Ok(again) => again,
                    Err(e) => {
                        tracing::warn!(%run_id, error = %e, "event delivery stopped by a store error; trying again");
                        false
                    }
                };
                lock(&this.active).remove(&run_id);
                if again {
                    this.wake.notify_one();
                }
            });
        }
    }

    /// Delivers run `run_id`'s undelivered events under its lease; `true` when the run got
    /// new events meanwhile that this call left to the next look.
    async fn deliver(&self, run_id: &str) -> Result<bool, StoreError> {
        let lease = micros(self.config.lease);
        let now = now_us();
        let taken = self
            .store
            .lease_delivery(run_id, &self.owner, now, now.saturating_add(lease))
            .await?;
        let DeliveryLease::Taken(mut progress) = taken else {
            return Ok(false);
        };
        if let Some(at) = progress.retry_at_us.filter(|&at| at > now) {
            // Looked at before its retry is due (its due time was written back early): not
            // tried, only put off again.
            self.store
                .release_delivery(run_id, &self.owner, &progress, Some(at))
                .await?;
            return Ok(false);
        }
        let Some(run) = self.store.load_run(run_id).await? else {
            self.store
                .release_delivery(run_id, &self.owner, &progress, None)
                .await?;
            return Ok(false);
        };
        match self.walk(&run, &mut progress).await? {
            Walk::Done => {
                let cleared = self
                    .store
                    .release_delivery(run_id, &self.owner, &progress, None)
                    .await?;
                Ok(!cleared)
            }
            Walk::RetryAt(at) => {
                self.store
                    .release_delivery(run_id, &self.owner, &progress, Some(at))
                    .await?;
                Ok(false)
            }
            Walk::LeaseLost => Ok(false),
        }
    }

    /// Sends `run`'s events from `progress` on, in order, saving `progress` as it goes.
    async fn walk(&self, run: &OpRun, progress: &mut DeliveryProgress) -> Result<Walk, StoreError> {
        let url = &run.event_delivery.topic;
        let lane = self.lane(url);
        let mut saved = Instant::now();
        let from = progress.attempt;
        for attempt in run.attempts.iter().filter(|a| a.attempt >= from) {
            if attempt.attempt > progress.attempt {
                *progress = DeliveryProgress {
                    attempt: attempt.attempt,
                    ..DeliveryProgress::default()
                };
            }
            while progress.next < attempt.events_total {
                let query = EventQuery {
                    attempt: Some(attempt.attempt),
                    cursor: match progress.next {
                        0 => EventCursor::Start,
                        next => EventCursor::After(next - 1),
                    },
                    limit: PAGE,
                };
                let page = match list_events(self.store.as_ref(), &run.id, &query).await {
                    Ok(Some(page)) => page,
                    Ok(None) => return Ok(Walk::Done),
                    Err(crate::store::QueryError::Store(e)) => return Err(e),
                    Err(e) => return Err(StoreError::Backend(Arc::new(e))),
                };
                if page.events.is_empty() {
                    // Counted but not stored (never expected): skip them rather than look
                    // for them forever.
                    tracing::warn!(run_id = %run.id, attempt = attempt.attempt, from = progress.next, to = attempt.events_total, "events to deliver are missing from the store; skipped");
                    progress.next = attempt.events_total;
                    break;
                }
                for (index, event) in page.events {
                    let state = state_after(progress.state, attempt, &event);
                    let message = EventMessage {
                        run_id: run.id.clone(),
                        attempt: attempt.attempt,
                        index,
                        state: state.as_str().to_owned(),
                        op_definition: run.op_definition.clone(),
                        event,
                        attributes: run.event_delivery.attributes.clone(),
                    };
                    if let Some(retry_at) = self.send(&lane, url, &message, progress).await {
                        return Ok(Walk::RetryAt(retry_at));
                    }
                    progress.next = index.saturating_add(1);
                    progress.state = Some(state);
                    if saved.elapsed() >= SAVE_EVERY {
                        let until = now_us().saturating_add(micros(self.config.lease));
                        if !self
                            .store
                            .save_delivery(&run.id, &self.owner, progress, until)
                            .await?
                        {
                            return Ok(Walk::LeaseLost);
                        }
                        saved = Instant::now();
                    }
                }
            }
        }
        Ok(Walk::Done)
    }

    /// Sends one event; `Some(time)` when it failed and is to be tried again then (its
    /// failure counted in `progress`), `None` when it is done with (sent or given up on).
    async fn send(
        &self,
        lane: &Lane,
        url: &str,
        message: &EventMessage,
        progress: &mut DeliveryProgress,
    ) -> Option<i64> {
        let (shown, run_id) = (redact(url), &message.run_id);
        let outcome = self.post(lane, url, message).await;
        let metrics = &self.metrics;
        match outcome {
            Sent::Ok => {
                metrics.deliveries_ok.fetch_add(1, Ordering::Relaxed);
            }
            Sent::Refused(reason) => {
                metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %shown, %run_id, index = message.index, %reason, "event delivery refused; event given up");
            }
            Sent::Failed(error) => {
                let now = now_us();
                let since = *progress.failing_since_us.get_or_insert(now);
                if now.saturating_sub(since) < micros(self.config.give_up_after) {
                    progress.failures = progress.failures.saturating_add(1);
                    metrics.deliveries_retried.fetch_add(1, Ordering::Relaxed);
                    let backoff = Backoff::new(self.config.backoff, self.config.max_backoff);
                    let wait = backoff.delay(progress.failures);
                    tracing::debug!(url = %shown, %run_id, %error, ?wait, "event delivery failed; trying again later");
                    let at = now.saturating_add(micros(wait));
                    progress.retry_at_us = Some(at);
                    return Some(at);
                }
                metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %shown, %run_id, index = message.index, %error, failures = progress.failures, "event delivery still failing; event given up");
            }
        }
        progress.failures = 0;
        progress.failing_since_us = None;
        progress.retry_at_us = None;
        None
    }

    /// The lane of `url`'s destination, made when none has deliveries.
    fn lane(&self, url: &str) -> LaneGuard<'_> {
        let key = destination_key(url);
        let lane = lock(&self.lanes)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Lane {
                    slots: Semaphore::new(self.config.per_destination.max(1)),
                    client: tokio::sync::Mutex::default(),
                })
            })
            .clone();
        LaneGuard {
            lanes: &self.lanes,
            key,
            lane,
        }
    }

    /// POSTs `message` once, holding a slot of its destination and one of all.
    async fn post(&self, lane: &Lane, url: &str, message: &EventMessage) -> Sent {
        let (Ok(_own), Ok(_any)) = (lane.slots.acquire().await, self.slots.acquire().await) else {
            return Sent::Failed("the delivery slots are closed".into());
        };
        let client = match self.client(lane, url).await {
            Ok(client) => client,
            Err(reason) => return Sent::Refused(format!("by the destination policy: {reason}")),
        };
        match client.post(url).json(message).send().await {
            Ok(response) if response.status().is_success() => Sent::Ok,
            Ok(response) => {
                let status = response.status();
                let again = status.is_server_error() || [408, 425, 429].contains(&status.as_u16());
                if again {
                    Sent::Failed(format!("HTTP {status}"))
                } else {
                    Sent::Refused(format!("by the receiver: HTTP {status}"))
                }
            }
            Err(e) => Sent::Failed(e.without_url().to_string()),
        }
    }

    /// The destination's client: the cached one while fresh, else checked anew by the policy.
    async fn client(&self, lane: &Lane, url: &str) -> Result<reqwest::Client, String> {
        let mut cached = lane.client.lock().await;
        if let Some((checked, client)) = cached.as_ref() {
            if checked.elapsed() < DESTINATION_TTL {
                return Ok(client.clone());
            }
        }
        let destination = self.config.policy.check(url).await?;
        let client = pinned_client(&self.config, &destination)
            .map_err(|e| format!("cannot build the delivery client: {e}"))?;
        *cached = Some((Instant::now(), client.clone()));
        Ok(client)
    }
}

/// A lane in use; the lane goes from the map with its last user.
struct LaneGuard<'a> {
    lanes: &'a Mutex<HashMap<String, Arc<Lane>>>,
    key: String,
    lane: Arc<Lane>,
}

impl std::ops::Deref for LaneGuard<'_> {
    type Target = Lane;

    fn deref(&self) -> &Lane {
        &self.lane
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        let mut lanes = lock(self.lanes);
        // The map's and this guard's: nobody else uses it (clones are made under the lock).
        let last = lanes
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lane) && Arc::strong_count(l) == 2);
        if last {
            lanes.remove(&self.key);
        }
    }
}

/// Looks for due runs until the deliverer is dropped: at once when woken, else every `poll`.
async fn run_loop(deliverer: Weak<Deliverer>) {
    loop {
        let Some(this) = deliverer.upgrade() else {
            return;
        };
        this.look().await;
        let poll = this.config.poll;
        let _ = tokio::time::timeout(poll, this.wake.notified()).await;
    }
}

/// The destination of `url` as lanes count it: scheme, host and port (the URL itself when it
/// does not parse; the policy then refuses it).
fn destination_key(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or_default()
        ),
        Err(_) => url.to_owned(),
    }
}

/// A client that connects only to the addresses the policy checked (no second DNS lookup)
/// and follows no redirect.
fn pinned_client(
    config: &DeliveryConfig,
    destination: &crate::destination::Destination,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("gyoza/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(&destination.host, &destination.addrs)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: EventType, payload: Value) -> EventEntry {
        EventEntry {
            t: chrono::Utc::now(),
            event_type,
            msg: Value::Null,
            payload: payload.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn each_message_says_the_attempts_state_after_its_event() {
        let spec = gyoza_core::run::NewRun {
            image: "img".into(),
            ..Default::default()
        };
        let run = OpRun::new(spec, chrono::Utc::now()).unwrap();
        let mut attempt = run.current().clone();
        let info = event(EventType::Info, Value::Null);
        assert_eq!(state_after(None, &attempt, &info), OpRunState::Pending);
        attempt.assigned_at = Some(info.t - chrono::Duration::seconds(1));
        assert_eq!(state_after(None, &attempt, &info), OpRunState::Assigned);
        let started = event(EventType::Started, Value::Null);
        assert_eq!(state_after(None, &attempt, &started), OpRunState::Running);
        assert_eq!(
            state_after(Some(OpRunState::Running), &attempt, &info),
            OpRunState::Running
        );
        let manual = event(
            EventType::Info,
            serde_json::json!({"manual": true, "state": "CANCELLED"}),
        );
        assert_eq!(
            state_after(Some(OpRunState::Running), &attempt, &manual),
            OpRunState::Cancelled
        );
        // Only a manual change's payload says the state.
        let claimed = event(EventType::Info, serde_json::json!({"state": "CANCELLED"}));
        assert_eq!(
            state_after(Some(OpRunState::Running), &attempt, &claimed),
            OpRunState::Running
        );
        let retried = event(EventType::Retried, Value::Null);
        assert_eq!(state_after(None, &attempt, &retried), OpRunState::Pending);
    }
}
