//! Event delivery: a run whose `event_delivery.topic` is an `http://` or `https://` URL has
//! each of its events POSTed there as JSON.
//!
//! Delivery never blocks a run: events are queued (bounded; when the queue is full an event
//! is dropped, logged and counted) and sent by background tasks, each retried with
//! exponential backoff. Deliveries are at-least-once per server process and may arrive out
//! of order: the body carries the attempt and the event's index so a receiver can order and
//! deduplicate. Topics that are not URLs are left alone.
//!
//! Each delivery first passes the destination policy ([`crate::destination`]): by default only
//! public addresses are reached (after DNS resolution, pinned for the request), redirects are
//! not followed, and URLs are logged with their credentials redacted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gyoza_core::backoff::Backoff;
use gyoza_core::{EventEntry, OpRun};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};

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

/// Queues and sends event deliveries.
pub struct Deliverer {
    queue: mpsc::Sender<Delivery>,
    metrics: Arc<Metrics>,
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
    /// Starts the delivery loop on the current tokio runtime.
    pub fn start(config: DeliveryConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let (queue, mut receiver) = mpsc::channel::<Delivery>(config.queue);
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let loop_metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(delivery) = receiver.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (config, metrics) = (config.clone(), loop_metrics.clone());
                tokio::spawn(async move {
                    send(&config, &metrics, delivery).await;
                    drop(slot);
                });
            }
        });
        Arc::new(Self { queue, metrics })
    }

    /// Queues the events `run` gained since `before`, if its topic is a URL.
    pub fn enqueue_new(&self, run: &OpRun, before: Mark) {
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
                if self.queue.try_send(delivery).is_err() {
                    self.metrics
                        .deliveries_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(run_id = %run.id, "event delivery queue full; event dropped");
                }
            }
        }
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

async fn send(config: &DeliveryConfig, metrics: &Metrics, delivery: Delivery) {
    let url = redact(&delivery.url);
    let run_id = &delivery.message.run_id;
    let client = match config.policy.check(&delivery.url).await {
        Ok(destination) => pinned_client(config, &destination),
        Err(reason) => {
            metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%url, %run_id, %reason, "event delivery refused by the destination policy");
            return;
        }
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            metrics.deliveries_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%url, %run_id, error = %e, "cannot build the delivery client");
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
