//! The queues' usage of ended attempts through the API, on both stores: a run completed
//! through the router adds its usage to its queue in the store, a restart keeps it, claims
//! read it and still assign, and no answer a client gets shows it (clients written for a
//! server without usage are unaffected).

pub mod common;

use common::Api;
use gyoza_host::clock::Clock;
use gyoza_host::store::DEFAULT_HALF_LIFE_S;
use serde_json::json;

on_both_stores! {
    ended_usage_is_kept_and_not_shown => ended_usage_is_kept_and_not_shown;
}

/// The usage of `cpu` cores and `ram_mb` held for `seconds`, decayed to its end with the
/// default half-life: amount × h / ln 2 × (1 − 2^(−seconds / h)).
fn held_usage(cpu: f64, ram_mb: f64, seconds: f64) -> [f64; 3] {
    let h = f64::from(DEFAULT_HALF_LIFE_S);
    let weight = h / std::f64::consts::LN_2 * (1.0 - (-seconds / h).exp2());
    [cpu * weight, ram_mb * weight, 0.0]
}

/// Fails unless `got` is queue "q" alone with `want`, within 1e-6 relative.
fn assert_q(got: &[(String, [f64; 3])], want: [f64; 3]) {
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "q");
    for (g, w) in got[0].1.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1e-9),
            "{got:?}, expected {want:?}"
        );
    }
}

async fn ended_usage_is_kept_and_not_shown(api: Api) {
    let body = json!({"image": "x", "queue": "q", "constraints": {"cpu": 2, "ram_mb": 1024}});
    let id = api.claimed_run(body.clone()).await;
    let usage = |api: &Api| {
        let (store, now) = (api.service.store.clone(), api.clock.now());
        async move { store.queue_usage(now, DEFAULT_HALF_LIFE_S).await.unwrap() }
    };
    assert!(
        usage(&api).await.is_empty(),
        "a held run is not in the store's usage"
    );
    api.advance(100);
    let completed = api.start_and_complete(&id, "w1", 1).await;
    assert_eq!(completed["state"], "COMPLETED");
    let expected = held_usage(2.0, 1024.0, 100.0);
    assert_q(&usage(&api).await, expected);
    // Clients are shown no usage: the run, the listing and a claim answer as before.
    let shown = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(shown["state"], "COMPLETED");
    let listed = api.ok("GET", "/runs", None).await;
    // A claim reads the usage and still assigns.
    let next = api.ok("POST", "/runs", Some(body)).await;
    let claim = api.ok("POST", "/workers/w1/claim?max=1", None).await;
    assert_eq!(claim["ops"][0]["id"], next["id"]);
    for answer in [&completed, &shown, &listed, &claim] {
        assert!(!answer.to_string().contains("usage"), "{answer}");
    }
    // A restarted server (same database) has it still, decayed to its clock.
    let api = api.restart().await;
    api.advance(i64::from(DEFAULT_HALF_LIFE_S));
    assert_q(&usage(&api).await, expected.map(|u| u / 2.0));
}
