//! `GET /metrics` and the request-counting middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gyoza_core::OpRunState;
use gyoza_core::api::StrategyInfo;

use super::AppState;
use crate::error::ApiError;
use crate::metrics::{Gauge, label};

/// Counts every answered request by method, route pattern and status.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // The route pattern, not the path: run ids would make every path a new series.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.record_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The method as a metric label: one of the methods the API knows, else `other`, so that
/// made-up methods (anyone can send them, without a key) cannot add series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, name)| name)
}

/// Metrics in the Prometheus text format (needs the API key, like the rest of the API).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state.service.store.count_runs_by_state().await?;
    let runs = Gauge {
        name: "gyoza_runs",
        help: "Runs by state.",
        samples: OpRunState::ALL
            .iter()
            .map(|s| {
                let n = counts
                    .iter()
                    .find(|(state, _)| state == s)
                    .map_or(0, |(_, n)| *n);
                (format!("state=\"{s}\""), n as f64)
            })
            .collect(),
    };
    let now = state.service.clock.now();
    let workers = state.service.store.list_workers().await?;
    let active: Vec<_> = workers
        .iter()
        .filter(|w| w.is_active(now, state.service.worker_timeout))
        .collect();
    let capacity = |pick: fn(&gyoza_core::Worker) -> f64| -> Vec<(String, f64)> {
        active
            .iter()
            .map(|w| (format!("worker=\"{}\"", label(&w.id)), pick(w)))
            .collect()
    };
    let mut gauges = vec![
        runs,
        Gauge {
            name: "gyoza_workers_active",
            help: "Workers that heartbeated within the worker timeout.",
            samples: vec![(String::new(), active.len() as f64)],
        },
        Gauge {
            name: "gyoza_worker_cpu_cores",
            help: "CPU cores of each active worker.",
            samples: capacity(|w| f64::from(w.resources.cpu_cores)),
        },
        Gauge {
            name: "gyoza_worker_ram_mb",
            help: "RAM of each active worker, in MB.",
            samples: capacity(|w| w.resources.ram_mb as f64),
        },
        Gauge {
            name: "gyoza_worker_vram_mb",
            help: "VRAM of each active worker (all GPUs), in MB.",
            samples: capacity(|w| w.resources.gpus.iter().map(|g| g.vram_mb as f64).sum()),
        },
        Gauge {
            name: "gyoza_worker_running_ops",
            help: "Runs each active worker reported as running in its last heartbeat.",
            samples: capacity(|w| w.running_ops.len() as f64),
        },
    ];
    if let Some(host) = &state.strategies {
        let list = host.list();
        let per_plugin = |value: fn(&StrategyInfo) -> Option<f64>| -> Vec<(String, f64)> {
            list.strategies
                .iter()
                .filter_map(|s| value(s).map(|v| (format!("strategy=\"{}\"", label(&s.name)), v)))
                .collect()
        };
        gauges.extend([
            Gauge {
                name: "gyoza_strategy_calls",
                help: "Calls made to each loaded strategy since it was loaded.",
                samples: per_plugin(|s| Some(s.calls as f64)),
            },
            Gauge {
                name: "gyoza_strategy_failures",
                help: "Calls that trapped, timed out or failed, per strategy.",
                samples: per_plugin(|s| Some(s.failures as f64)),
            },
            Gauge {
                name: "gyoza_strategy_dropped_choices",
                help: "Unknown, duplicate or over-capacity choices dropped from answers, per strategy.",
                samples: per_plugin(|s| Some(s.dropped as f64)),
            },
            Gauge {
                name: "gyoza_strategy_evictions",
                help: "Preemptions each strategy asked for that were carried out.",
                samples: per_plugin(|s| Some(s.evictions as f64)),
            },
            Gauge {
                name: "gyoza_strategy_evictions_refused",
                help: "Preemptions each strategy asked for that the host's rules refused.",
                samples: per_plugin(|s| Some(s.evictions_refused as f64)),
            },
            Gauge {
                name: "gyoza_strategy_latency_p50_seconds",
                help: "Median latency of recent calls, per strategy.",
                samples: per_plugin(|s| s.latency_p50_ms.map(|ms| ms / 1000.0)),
            },
            Gauge {
                name: "gyoza_strategy_latency_p99_seconds",
                help: "99th-percentile latency of recent calls, per strategy.",
                samples: per_plugin(|s| s.latency_p99_ms.map(|ms| ms / 1000.0)),
            },
            Gauge {
                name: "gyoza_strategy_active",
                help: "1 for the active strategy, 0 for the others.",
                samples: per_plugin(|s| Some(if s.active { 1.0 } else { 0.0 })),
            },
        ]);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    ))
}
