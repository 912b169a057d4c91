//! Event delivery: a run whose `event_delivery.topic` is an `http://` or `https://` URL has
//! each of its events POSTed there as JSON.
//!
//! Delivery never blocks a run: events are queued (bounded; when the queue is full an event
//! is dropped, logged and counted) and sent by background tasks, each retried with
//! exponential backoff. Deliveries are at-least-once per server process and may arrive out
//! of order: the body carries the attempt and the event's index so a receiver can order and
//! deduplicate. Topics that are not URLs are left alone.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyoza_core::backoff::Backoff;
use gyoza_core::sync::lock;
use gyoza_core::{EventEntry, OpRun};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::destination::{DestinationPolicy, redact};
use crate::metrics::Metrics;

/// How deliveries are attempted.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Tries per event, the first included.
    pub tries: u32,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Time limit of one POST.
    pub timeout: Duration,
    /// Events waiting to be sent before new ones are dropped.
    pub queue: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Deliveries in flight at once to one destination (scheme, host and port).
    pub per_destination: usize,
    /// Which destinations may be reached (see [`crate::destination`]).
    pub policy: DestinationPolicy,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            tries: 6,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            queue: 10_000,
            concurrency: 16,
            per_destination: 4,
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
    pub index: usize,
    /// The run's state after the event.
    pub state: String,
    /// The run's definition, if any.
    pub op_definition: Option<String>,
    /// The event.
    pub event: EventEntry,
    /// `event_delivery.attributes` of the run.
    pub attributes: Map<String, Value>,
}

struct Delivery {
    url: String,
    message: EventMessage,
}

/// How long a destination's checked addresses and client are reused.
pub const DESTINATION_TTL: Duration = Duration::from_secs(30);

/// One destination's share of the slots and its checked client.
#[derive(Default)]
struct Lane {
    slots: Option<Arc<Semaphore>>,
    client: tokio::sync::Mutex<Option<(Instant, reqwest::Client)>>,
}

/// Queues and sends event deliveries.
pub struct Deliverer {
    config: DeliveryConfig,
    metrics: Arc<Metrics>,
    /// Slots of all deliveries in flight.
    slots: Arc<Semaphore>,
    /// Deliveries queued or in flight (bounded by `config.queue`).
    queued: AtomicUsize,
    /// The destinations with deliveries queued or in flight.
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// Where a run's timeline stood before a change: (attempts, events in the last attempt's
/// whole timeline).
pub type Mark = (usize, u64);

/// The mark of `run` now.
pub fn mark(run: &OpRun) -> Mark {
    (
        run.attempts.len(),
        run.attempts.last().map_or(0, |a| a.events_total),
    )
}

fn is_url(topic: &str) -> bool {
    topic.starts_with("http://") || topic.starts_with("https://")
}

impl Deliverer {
    /// A deliverer; deliveries are sent by tasks on the current tokio runtime.
    pub fn start(config: DeliveryConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            queued: AtomicUsize::new(0),
            lanes: Mutex::default(),
            config,
            metrics,
        })
    }

    /// Queues `delivery` unless the queue is full; sent by a task of its own that waits for a
    /// slot of its destination, then for one of all.
    fn queue(self: &Arc<Self>, delivery: Delivery) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.queue).then_some(n + 1)
            });
        if taken.is_err() {
            return false;
        }
        let key = destination_key(&delivery.url);
        let lane = {
            let mut lanes = lock(&self.lanes);
            let lane = lanes.entry(key.clone()).or_insert_with(|| {
                Arc::new(Lane {
                    slots: Some(Arc::new(Semaphore::new(self.config.per_destination.max(1)))),
                    ..Lane::default()
                })
            });
            lane.clone()
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(slots) = &lane.slots {
                if let Ok(_own) = slots.acquire().await {
                    if let Ok(_any) = this.slots.acquire().await {
                        this.send(&lane, delivery).await;
                    }
                }
            }
            this.queued.fetch_sub(1, Ordering::AcqRel);
            drop(lane);
            let mut lanes = lock(&this.lanes);
            if lanes.get(&key).is_some_and(|l| Arc::strong_count(l) == 1) {
                lanes.remove(&key);
            }
        });
        true
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

    /// Queues the events `run` gained since `before`, if its topic is a URL.
    pub fn enqueue_new(self: &Arc<Self>, run: &OpRun, before: Mark) {
        if !is_url(&run.event_delivery.topic) {
            return;
        }
        // Only the events the change appended are loaded past the mark: a store loads a run
        // for a change with at most the inline end of its timeline.
        for attempt in run.attempts.iter().skip(before.0.saturating_sub(1)) {
            let first = if usize::try_from(attempt.attempt).is_ok_and(|a| a == before.0) {
                before.1
            } else {
                0
            };
            let indexed = (attempt.first_event()..).zip(&attempt.events);
            for (index, event) in indexed.filter(|(index, _)| *index >= first) {
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                let delivery = Delivery {
                    url: run.event_delivery.topic.clone(),
                    message: EventMessage {
                        run_id: run.id.clone(),
                        attempt: attempt.attempt,
                        index,
                        state: run.state.as_str().to_owned(),
                        op_definition: run.op_definition.clone(),
                        event: event.clone(),
                        attributes: run.event_delivery.attributes.clone(),
                    },
                };
                if !self.queue(delivery) {
                    self.metrics
                        .deliveries_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(run_id = %run.id, "event delivery queue full; event dropped");
                }
            }
        }
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

impl Deliverer {
    async fn send(&self, lane: &Lane, delivery: Delivery) {
        let (config, metrics) = (&self.config, &self.metrics);
        let url = redact(&delivery.url);
        let run_id = &delivery.message.run_id;
        let client = match self.client(lane, &delivery.url).await {
            Ok(client) => client,
            Err(reason) => {
                metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%url, %run_id, %reason, "event delivery refused by the destination policy");
                return;
            }
        };
        // Uncapped: `tries` bounds the waits.
        let backoff = Backoff::new(config.backoff, Duration::MAX);
        for attempt in 1..=config.tries {
            let outcome = client
                .post(&delivery.url)
                .json(&delivery.message)
                .send()
                .await;
            let error = match outcome {
                Ok(response) if response.status().is_success() => {
                    metrics.deliveries_ok.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(response) => format!("HTTP {}", response.status()),
                Err(e) => e.without_url().to_string(),
            };
            if attempt == config.tries {
                metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%url, %run_id, %error, "event delivery failed; giving up");
                return;
            }
            tracing::debug!(%url, %error, "event delivery failed; retrying");
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
}
