//! A run's events over HTTP: a chatty op cannot make the run itself grow (events live apart
//! from it), `GET /runs/{id}/events` pages through every event once and in order while others
//! append, and the caps answer 413 (size, with both sizes) and 400 (count, state events still
//! accepted).

pub mod common;

use std::collections::HashSet;

use axum::http::StatusCode;
use common::{Api, detail};
use gyoza_core::limits::{MAX_EVENT_BYTES, MAX_EVENTS_PER_ATTEMPT, RUN_VIEW_EVENTS};
use serde_json::{Value, json};

/// Every event of `run`'s current attempt through `GET /runs/{id}/events`, `limit` a page:
/// (index, msg).
async fn page_all(api: &Api, run: &str, limit: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let mut uri = format!("/runs/{run}/events?limit={limit}");
    loop {
        let page = api.ok("GET", &uri, None).await;
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        for event in events {
            seen.push((
                event["id"].as_u64().unwrap(),
                event["msg"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        match seen.last() {
            Some((last, _)) if page["has_more"] == true => {
                uri = format!("/runs/{run}/events?limit={limit}&after={last}");
            }
            _ => return seen,
        }
    }
}

async fn stored_bytes(api: &Api, run: &str) -> u64 {
    api.service
        .store
        .stored_run_bytes(run)
        .await
        .unwrap()
        .unwrap()
}

fn info(msg: &str, pad: usize) -> Value {
    json!({"type": "INFO", "msg": msg, "payload": {"pad": "x".repeat(pad)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_events_of_60_kb_leave_the_run_row_bounded_and_page_once_in_order() {
    const TASKS: usize = 4;
    const EACH: usize = 500;
    const PAD: usize = 60_000;
    let api = std::sync::Arc::new(Api::new().await);
    let run = api.claimed_run(json!({"image": "chatty"})).await;
    api.event_ok(
        &run,
        json!({"type": "STARTED", "payload": {"worker_id": "w1"}}),
    )
    .await;
    api.event_ok(&run, info("first", PAD)).await;
    let early = stored_bytes(&api, &run).await;

    let appenders: Vec<_> = (0..TASKS)
        .map(|task| {
            let (api, run) = (api.clone(), run.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let answer = api
                        .event_ok(&run, info(&format!("{task}-{i:04}"), PAD))
                        .await;
                    // The answer shows what this change appended, not the history.
                    assert_eq!(answer["events"].as_array().unwrap().len(), 1);
                }
            })
        })
        .collect();
    // A reader pages through the timeline while it grows.
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(page_all(&api, &run, 37).await);
    }
    for appender in appenders {
        appender.await.unwrap();
    }

    let all = page_all(&api, &run, 100).await;
    let total = 2 + TASKS * EACH;
    assert_eq!(all.len(), total);
    let indexes: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (0..total as u64).collect::<Vec<_>>(), "in order");
    let unique: HashSet<&String> = all.iter().map(|(_, m)| m).collect();
    assert_eq!(unique.len(), total, "each event once");
    for task in 0..TASKS {
        let mine: Vec<&str> = all
            .iter()
            .map(|(_, m)| m.as_str())
            .filter(|m| m.starts_with(&format!("{task}-")))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{task}-{i:04}")).collect();
        assert_eq!(
            mine, expected,
            "task {task}'s events in the order it sent them"
        );
    }
    for seen in &during {
        assert_eq!(
            &all[..seen.len()],
            &seen[..],
            "a page read meanwhile is a prefix"
        );
    }

    // 120 MB of events; the run row holds none of them.
    let late = stored_bytes(&api, &run).await;
    assert!(
        late < early + 1_000,
        "run row: {early} bytes after 2 events, {late} after {total}"
    );
    let view = api.ok("GET", &format!("/runs/{run}"), None).await;
    assert_eq!(view["events_total"], total);
    assert_eq!(view["attempts"][0]["events_total"], total);
    let shown = view["events"].as_array().unwrap();
    assert_eq!(shown.len(), RUN_VIEW_EVENTS);
    let last: Vec<&str> = all[total - RUN_VIEW_EVENTS..]
        .iter()
        .map(|(_, m)| m.as_str())
        .collect();
    let shown: Vec<&str> = shown.iter().map(|e| e["msg"].as_str().unwrap()).collect();
    assert_eq!(shown, last, "the view shows the end of the timeline");
    // The previous page of the end, as a client would walk back.
    let back = api
        .ok(
            "GET",
            &format!("/runs/{run}/events?before={}&limit=3", total - 1),
            None,
        )
        .await;
    let ids: Vec<u64> = back["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    let end = total as u64 - 1;
    assert_eq!(ids, vec![end - 3, end - 2, end - 1]);
    assert_eq!(back["has_more"], true);
}

#[tokio::test]
async fn an_event_over_the_size_cap_is_413_with_both_sizes_and_state_events_are_not_capped() {
    let api = Api::new().await;
    let run = api.claimed_run(json!({"image": "x"})).await;
    // The largest accepted: msg "" (2 bytes as JSON) and {"pad": "..."} (10 + pad).
    let fits = MAX_EVENT_BYTES - 2 - 10;
    api.event_ok(&run, info("", fits)).await;
    let (status, answer) = api.event(&run, info("", fits + 1)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let message = detail(&answer);
    assert!(
        message.contains(&format!("are {} bytes", MAX_EVENT_BYTES + 1))
            && message.contains(&format!("{MAX_EVENT_BYTES} bytes")),
        "{message}"
    );
    let (status, answer) = api
        .event(
            &run,
            json!({"type": "PROGRESS", "msg": 5, "payload": {"pad": "y".repeat(2 * MAX_EVENT_BYTES)}}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let view = api.ok("GET", &format!("/runs/{run}"), None).await;
    assert_eq!(view["events_total"], 1, "refused events are not recorded");
    assert_eq!(view["progress"], 0);
    // A result larger than an event may be still completes the run.
    api.event_ok(
        &run,
        json!({"type": "STARTED", "payload": {"worker_id": "w1"}}),
    )
    .await;
    let outputs = json!({"blob": "z".repeat(4 * MAX_EVENT_BYTES)});
    let done = api
        .event_ok(
            &run,
            json!({"type": "COMPLETED", "payload": {"outputs": outputs}}),
        )
        .await;
    assert_eq!(done["state"], "COMPLETED");
    assert_eq!(done["outputs"], outputs);
}

#[tokio::test]
async fn beyond_the_count_cap_op_events_are_400_and_state_events_still_pass() {
    let api = Api::new().await;
    let run = api.claimed_run(json!({"image": "x"})).await;
    // Bring the attempt to one short of the cap, as 9,999 events would.
    api.service
        .update_run(
            &run,
            Box::new(|r| {
                r.attempts[0].events_total = MAX_EVENTS_PER_ATTEMPT - 1;
                Ok(())
            }),
        )
        .await
        .unwrap();
    api.event_ok(&run, info("the last one", 0)).await;
    for kind in ["INFO", "PROGRESS", "ERROR"] {
        let (status, answer) = api.event(&run, json!({"type": kind, "msg": 7})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            detail(&answer).contains(&format!(
                "already has {MAX_EVENTS_PER_ATTEMPT} INFO, PROGRESS and ERROR events"
            )),
            "{answer}"
        );
    }
    api.event_ok(
        &run,
        json!({"type": "STARTED", "payload": {"worker_id": "w1"}}),
    )
    .await;
    let done = api
        .event_ok(
            &run,
            json!({"type": "FAILED", "payload": {"error_message": "boom"}}),
        )
        .await;
    assert_eq!(done["state"], "FAILED");
    assert_eq!(done["events_total"], MAX_EVENTS_PER_ATTEMPT + 2);
}

#[tokio::test]
async fn the_events_page_refuses_bad_parameters_with_a_detail() {
    let api = Api::new().await;
    let run = api.claimed_run(json!({"image": "x"})).await;
    for i in 0..5 {
        api.event_ok(&run, info(&i.to_string(), 0)).await;
    }
    let cases = [
        (
            "limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "'limit' must be between 1 and 100",
        ),
        (
            "limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "'limit' must be between 1 and 100",
        ),
        ("limit=x", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
        (
            "after=1&before=3",
            StatusCode::BAD_REQUEST,
            "after and before cannot be used together",
        ),
        (
            "attempt=0",
            StatusCode::BAD_REQUEST,
            "attempt must be a number from 1",
        ),
        (
            "attempt=2",
            StatusCode::NOT_FOUND,
            "has no attempt 2 (its attempts are 1 to 1)",
        ),
    ];
    for (query, status, fragment) in cases {
        let (got, answer) = api
            .call("GET", &format!("/runs/{run}/events?{query}"), None)
            .await;
        assert_eq!(got, status, "{query}: {answer}");
        assert!(detail(&answer).contains(fragment), "{query}: {answer}");
    }
    let (status, _) = api.call("GET", "/runs/nope/events", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // As the original server: no parameters is everything from the start (up to a page),
    // a negative `after` too, and `after` skips up to that index.
    let all = api.ok("GET", &format!("/runs/{run}/events"), None).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    assert_eq!(all["has_more"], false);
    assert_eq!(all["events"][0]["state"], "ASSIGNED");
    let negative = api
        .ok("GET", &format!("/runs/{run}/events?after=-5"), None)
        .await;
    assert_eq!(negative["events"], all["events"]);
    let later = api
        .ok("GET", &format!("/runs/{run}/events?after=2"), None)
        .await;
    let ids: Vec<u64> = later["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![3, 4]);
}
