//! The REST API through the router (no sockets): every endpoint, its errors, and the
//! original server's wire format and pagination.

pub mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use common::{Api, KEY, detail};
use gyoza_host::store::SqliteStore;
use serde_json::{Value, json};

fn definition(version: &str, image: &str) -> Value {
    json!({
        "id": "resize",
        "version": version,
        "image": image,
        "input_specs": {
            "width": {"type": "integer", "required": true},
            "format": {"type": "string", "required": false, "default": "png"},
            "quality": {"type": "number", "required": false}
        },
        "output_specs": {"path": {"type": "string"}},
        "constraints": {"cpu": 1, "ram_mb": 256},
        "retry_policy": {"max_attempts": 3, "backoff_ms": 500},
        "event_delivery": {"topic": "resize-events", "attributes": {"team": "img"}}
    })
}

#[tokio::test]
async fn health_is_public_and_everything_else_needs_the_key() {
    let api = Api::new().await;
    let (status, body) = api.raw("GET", "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    let routes = [
        ("GET", "/definitions"),
        ("POST", "/definitions"),
        ("GET", "/definitions/x"),
        ("POST", "/definitions/x/runs"),
        ("GET", "/runs"),
        ("POST", "/runs"),
        ("GET", "/runs/x"),
        ("PATCH", "/runs/x"),
        ("POST", "/runs/x/retry"),
        ("POST", "/runs/x/cancel"),
        ("POST", "/runs/x/release"),
        ("GET", "/runs/x/events"),
        ("POST", "/runs/x/events"),
        ("GET", "/runs/x/attempts"),
        ("GET", "/workers"),
        ("POST", "/workers/heartbeat"),
        ("POST", "/workers/x/claim"),
        ("GET", "/openapi.json"),
    ];
    for (method, uri) in routes {
        for key in [None, Some("wrong"), Some("test-ke"), Some("test-key ")] {
            let (status, body) = api.raw(method, uri, key, Some("{}".into())).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {key:?}"
            );
            assert!(detail(&body).contains("X-API-Key"));
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_a_detail() {
    let api = Api::new().await;
    let (status, body) = api.call("GET", "/nope", None).await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::NOT_FOUND, "Not Found")
    );
    let (status, body) = api.call("DELETE", "/runs", None).await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
    );
}

#[tokio::test]
async fn definitions_upsert_by_id_and_version() {
    let api = Api::new().await;
    let (status, first) = api
        .call(
            "POST",
            "/definitions",
            Some(definition("1.9.0", "resize:1.9")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["id"], "resize");
    assert_eq!(
        first["input_specs"]["format"],
        json!({"type": "string", "required": false, "default": "png"})
    );
    assert_eq!(first["createdAt"], first["created_at"]);

    api.advance(5);
    let (status, replaced) = api
        .call(
            "POST",
            "/definitions",
            Some(definition("1.9.0", "resize:1.9b")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "same id + version replaces");
    assert_eq!(replaced["image"], "resize:1.9b");
    assert_eq!(
        replaced["created_at"], first["created_at"],
        "creation time is kept"
    );
    assert_ne!(replaced["updated_at"], first["updated_at"]);

    let (status, _) = api
        .call(
            "POST",
            "/definitions",
            Some(definition("1.10.0", "resize:1.10")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "a new version is a new entry");
    api.ok(
        "POST",
        "/definitions",
        Some(json!({"id": "other", "version": "1", "image": "o"})),
    )
    .await;

    let all = api.ok("GET", "/definitions", None).await;
    let listed: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![("other", "1"), ("resize", "1.9.0"), ("resize", "1.10.0")]
    );

    let latest = api.ok("GET", "/definitions/resize", None).await;
    assert_eq!(
        latest["version"], "1.10.0",
        "latest is the highest semantic version"
    );
    let pinned = api
        .ok("GET", "/definitions/resize?version=1.9.0", None)
        .await;
    assert_eq!(pinned["image"], "resize:1.9b");

    let (status, body) = api.call("GET", "/definitions/nope", None).await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::NOT_FOUND, "OpDefinition 'nope' not found")
    );
    let (status, body) = api
        .call("GET", "/definitions/resize?version=9.9.9", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(detail(&body).contains("9.9.9"));
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_every_problem() {
    let api = Api::new().await;
    let (status, body) = api
        .call(
            "POST",
            "/definitions",
            Some(json!({
                "id": "", "version": "1", "image": "x",
                "input_specs": {"a": {"type": "strng"}, "b": {"type": "bool", "default": 3}},
                "retry_policy": {"max_attempts": 0}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = detail(&body);
    for part in [
        "id must not be empty",
        "unknown type 'strng'",
        "default must be bool",
        "max_attempts",
    ] {
        assert!(text.contains(part), "{text} lacks {part}");
    }
    let (status, body) = api
        .call(
            "POST",
            "/definitions",
            Some(json!({"id": "x", "version": "1"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&body).contains("image"), "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/definitions",
            Some(json!({"id": "x", "version": "1", "image": "i", "constraints": {"cpu": -1}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&body).contains("constraints.cpu"), "{body}");
    assert_eq!(
        api.ok("GET", "/definitions", None).await,
        json!([]),
        "nothing was stored"
    );
}

#[tokio::test]
async fn runs_from_definitions_validate_inputs_and_copy_settings() {
    let api = Api::new().await;
    api.ok(
        "POST",
        "/definitions",
        Some(definition("1.0.0", "resize:1")),
    )
    .await;
    api.ok(
        "POST",
        "/definitions",
        Some(definition("2.0.0", "resize:2")),
    )
    .await;

    let (status, run) = api
        .call(
            "POST",
            "/definitions/resize/runs",
            Some(json!({"inputs": {"width": 640}, "priority": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["image"], "resize:2");
    assert_eq!(run["op_definition"], "resize");
    assert_eq!(run["op_definition_version"], "2.0.0");
    assert_eq!(run["inputs"], json!({"width": 640, "format": "png"}));
    assert_eq!(
        run["constraints"],
        json!({"cpu": 1, "ram_mb": 256, "vram_mb": null})
    );
    assert_eq!(
        run["retry_policy"],
        json!({"max_attempts": 3, "backoff_ms": 500})
    );
    assert_eq!(
        run["event_delivery"],
        json!({"topic": "resize-events", "attributes": {"team": "img"}})
    );
    assert_eq!(run["priority"], 7);
    assert_eq!(run["state"], "PENDING");

    let pinned = api
        .ok(
            "POST",
            "/definitions/resize/runs?version=1.0.0",
            Some(json!({"inputs": {"width": 1}})),
        )
        .await;
    assert_eq!(pinned["image"], "resize:1");
    assert_eq!(
        pinned["priority"], 5,
        "default priority as the original client"
    );

    let (status, body) = api
        .call(
            "POST",
            "/definitions/resize/runs",
            Some(json!({"inputs": {"format": 3, "quality": "high"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = detail(&body);
    assert!(text.contains("missing required input 'width'"), "{text}");
    assert!(
        text.contains("input 'format' must be string, got integer"),
        "{text}"
    );
    assert!(
        text.contains("input 'quality' must be number, got string"),
        "{text}"
    );

    let (status, _) = api
        .call(
            "POST",
            "/definitions/nope/runs",
            Some(json!({"inputs": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            "POST",
            "/definitions/resize/runs?version=3.0.0",
            Some(json!({"inputs": {"width": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .call(
            "POST",
            "/definitions/resize/runs",
            Some(json!({"inputs": {"width": 1}, "priority": -1})),
        )
        .await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::BAD_REQUEST, "priority must be >= 0, got -1")
    );
}

#[tokio::test]
async fn ad_hoc_runs_and_bad_bodies() {
    let api = Api::new().await;
    let run = api
        .create_run(json!({
            "image": "busybox", "inputs": {"a": 1}, "constraints": {"ram_mb": 4096},
            "retry_policy": {"max_attempts": 2, "backoff_ms": 10}
        }))
        .await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(run["state"], "PENDING");
    assert_eq!(run["priority"], 5);
    assert_eq!(run["op_definition"], Value::Null);
    assert_eq!(run["current_attempt"], 1);
    assert_eq!(run["progress"], 0);
    assert_eq!(run["events"], json!([]));
    assert_eq!(run["outputs"], json!({}));
    assert_eq!(run["attempts"][0]["id"], format!("{id}_att_1"));
    assert_eq!(
        run["retry_policy"],
        json!({"max_attempts": 2, "backoff_ms": 10})
    );
    assert!(run["created_at"].as_str().unwrap().ends_with("+00:00"));

    assert_eq!(api.ok("GET", &format!("/runs/{id}"), None).await, run);
    let (status, body) = api.call("GET", "/runs/nope", None).await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::NOT_FOUND, "OpRun 'nope' not found")
    );

    let cases: [(&str, StatusCode, &str); 6] = [
        ("{bad", StatusCode::BAD_REQUEST, "Malformed JSON"),
        ("", StatusCode::BAD_REQUEST, "Malformed JSON"),
        ("{} trailing", StatusCode::BAD_REQUEST, "Malformed JSON"),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "image"),
        (
            r#"{"image": "x", "priority": "high"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            r#"{"image": "x", "priority": -4}"#,
            StatusCode::BAD_REQUEST,
            "priority must be >= 0",
        ),
    ];
    for (body, expected, fragment) in cases {
        let (status, answer) = api.raw("POST", "/runs", Some(KEY), Some(body.into())).await;
        assert_eq!(status, expected, "{body:?}: {answer}");
        assert!(detail(&answer).contains(fragment), "{body:?}: {answer}");
    }
    let list = api.ok("GET", "/runs", None).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "refused runs were not stored"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let api = Api::with_body_limit(1024).await;
    let big = json!({"image": "x", "inputs": {"blob": "a".repeat(4096)}});
    let (status, body) = api.call("POST", "/runs", Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(detail(&body).contains("larger"));
}

#[tokio::test]
async fn patch_updates_state_outputs_and_priority() {
    let api = Api::new().await;
    let id = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/runs/{id}");

    let run = api
        .ok(
            "PATCH",
            &uri,
            Some(json!({"priority": 9, "outputs": {"k": "v"}})),
        )
        .await;
    assert_eq!(
        (run["priority"].clone(), run["outputs"].clone()),
        (json!(9), json!({"k": "v"}))
    );

    for (body, fragment) in [
        (json!({"state": "DONE"}), "Invalid state 'DONE'"),
        (json!({"priority": -1}), "priority must be >= 0"),
    ] {
        let (status, answer) = api.call("PATCH", &uri, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(detail(&answer).contains(fragment), "{answer}");
    }
    let (status, _) = api
        .call("PATCH", &uri, Some(json!({"priority": "x"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let run = api
        .ok("PATCH", &uri, Some(json!({"state": "CANCELLED"})))
        .await;
    assert_eq!(run["state"], "CANCELLED");
    let (status, answer) = api
        .call("PATCH", &uri, Some(json!({"state": "PENDING"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail(&answer).contains("locked"), "{answer}");
    let (status, _) = api
        .call("PATCH", "/runs/nope", Some(json!({"priority": 1})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_run_goes_through_its_lifecycle_by_events() {
    let api = Api::new().await;
    api.heartbeat("w1", 4, 8192).await;
    let id = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = api
        .event(
            &id,
            json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        detail(&body).contains("STARTED requires state ASSIGNED"),
        "{body}"
    );

    assert_eq!(api.claim("w1", 1).await, vec![id.clone()]);
    let run = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(run["state"], "ASSIGNED");
    assert_eq!(run["execution_summary"]["worker_id"], "w1");

    let (status, run) = api
        .event(&id, json!({"type": "STARTED", "msg": "container up", "payload": {"worker_id": "w1", "gpu_id": 0}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["state"], "RUNNING");
    assert_eq!(run["execution_summary"]["gpu_id"], 0);

    let (_, run) = api.event(&id, json!({"type": "PROGRESS", "msg": 40})).await;
    assert_eq!(run["progress"], 40);
    let (status, body) = api
        .event(&id, json!({"type": "PROGRESS", "msg": 150}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail(&body).contains("between 0 and 100"));
    let (status, body) = api
        .event(&id, json!({"type": "EXPLODED", "msg": "?"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail(&body).contains("Invalid event type 'EXPLODED'"));
    let (status, _) = api.event(&id, json!({"msg": "no type"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    api.event(&id, json!({"type": "INFO", "msg": "halfway"}))
        .await;

    api.advance(2);
    let (status, run) = api
        .event(&id, json!({"type": "COMPLETED", "msg": "done", "payload": {"outputs": {"path": "/out.png"}}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["state"], "COMPLETED");
    assert_eq!(run["outputs"], json!({"path": "/out.png"}));
    assert_eq!(run["execution_summary"]["duration_ms"], 2000);
    assert!(run["attempts"][0]["finished_at"].is_string());

    let (status, body) = api.event(&id, json!({"type": "INFO", "msg": "late"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail(&body).contains("locked"), "{body}");

    let events = api.ok("GET", &format!("/runs/{id}/events"), None).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["STARTED", "PROGRESS", "INFO", "COMPLETED"]);
    let first = &events["events"][0];
    assert_eq!(first["id"], 0);
    assert_eq!(first["state"], "COMPLETED");
    assert_eq!(first["msg"], "container up");
    assert!(first["t"].as_str().unwrap().ends_with("+00:00"));

    let after = api
        .ok("GET", &format!("/runs/{id}/events?after=1"), None)
        .await;
    let ids: Vec<i64> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3]);
    let (status, _) = api
        .call("GET", &format!("/runs/{id}/events?after=x"), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api.call("GET", "/runs/nope/events", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.event("nope", json!({"type": "INFO", "msg": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_are_retried_after_backoff_until_attempts_run_out() {
    let api = Api::new().await;
    api.heartbeat("w1", 4, 8192).await;
    let id = api
        .create_run(json!({"image": "x", "retry_policy": {"max_attempts": 2, "backoff_ms": 30000}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(api.claim("w1", 1).await, vec![id.clone()]);
    let (_, run) = api
        .event(
            &id,
            json!({"type": "FAILED", "msg": "boom", "payload": {"error_message": "exit code 1"}}),
        )
        .await;
    assert_eq!(run["state"], "PENDING", "an attempt remains");
    assert_eq!(run["current_attempt"], 2);
    assert_eq!(run["attempts"][0]["state"], "FAILED");
    assert_eq!(
        run["attempts"][0]["execution_summary"]["error_message"],
        "exit code 1"
    );
    assert!(run["available_at"].is_string());

    api.advance(29);
    assert!(
        api.claim("w1", 1).await.is_empty(),
        "not claimable during the backoff"
    );
    api.advance(1);
    assert_eq!(api.claim("w1", 1).await, vec![id.clone()]);
    api.event(
        &id,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}}),
    )
    .await;
    let (_, run) = api
        .event(&id, json!({"type": "FAILED", "msg": "boom again"}))
        .await;
    assert_eq!(run["state"], "FAILED");
    assert_eq!(run["execution_summary"]["error_message"], "boom again");

    let attempts = api.ok("GET", &format!("/runs/{id}/attempts"), None).await;
    let attempts = attempts.as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1]["id"], format!("{id}_att_2"));
    assert_eq!(attempts[1]["op_run_id"], id);
    assert_eq!(attempts[1]["attempt"], 2);
    let (status, _) = api.call("GET", "/runs/nope/attempts", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A manual retry reopens a FAILED run whatever its retry policy says.
    let run = api.ok("POST", &format!("/runs/{id}/retry"), None).await;
    assert_eq!(run["state"], "PENDING");
    assert_eq!(run["current_attempt"], 3);
    assert_eq!(run["events"][0]["type"], "RETRIED");
    assert_eq!(run["events"][0]["payload"]["force"], true);
    let (status, _) = api.call("POST", "/runs/nope/retry", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn completed_runs_cannot_be_retried_and_cancel_is_once() {
    let api = Api::new().await;
    api.heartbeat("w1", 4, 8192).await;
    let done = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.claim("w1", 1).await;
    api.event(&done, json!({"type": "COMPLETED", "msg": "ok"}))
        .await;
    let (status, body) = api.call("POST", &format!("/runs/{done}/retry"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail(&body).contains("COMPLETED"), "{body}");

    let id = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = api.ok("POST", &format!("/runs/{id}/cancel"), None).await;
    assert_eq!(run["state"], "CANCELLED");
    assert_eq!(run["events"][0]["msg"], "Cancelled by user");
    let (status, body) = api.call("POST", &format!("/runs/{id}/cancel"), None).await;
    assert_eq!(
        (status, detail(&body)),
        (
            StatusCode::BAD_REQUEST,
            "Run is already in terminal state CANCELLED"
        )
    );
    let (status, _) = api.call("POST", "/runs/nope/cancel", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn runs_paginate_both_ways_newest_first() {
    let api = Api::new().await;
    let mut created = Vec::new();
    for i in 0..25 {
        let image = if i % 2 == 0 { "even" } else { "odd" };
        created.push(
            api.create_run(json!({"image": image})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        api.advance(1);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let page1 = api.ok("GET", "/runs?limit=10", None).await;
    assert_eq!(page1["object"], "list");
    assert_eq!(page1["url"], "/runs");
    assert_eq!(ids(&page1), newest_first[0..10]);
    assert_eq!(page1["has_more"], true);
    let page2 = api
        .ok(
            "GET",
            &format!("/runs?limit=10&starting_after={}", newest_first[9]),
            None,
        )
        .await;
    assert_eq!(ids(&page2), newest_first[10..20]);
    assert_eq!(page2["has_more"], true);
    let page3 = api
        .ok(
            "GET",
            &format!("/runs?limit=10&starting_after={}", newest_first[19]),
            None,
        )
        .await;
    assert_eq!(ids(&page3), newest_first[20..25]);
    assert_eq!(page3["has_more"], false);

    // Backwards from the last page: still newest first within a page.
    let back = api
        .ok(
            "GET",
            &format!("/runs?limit=10&ending_before={}", newest_first[20]),
            None,
        )
        .await;
    assert_eq!(ids(&back), newest_first[10..20]);
    assert_eq!(back["has_more"], true);
    let back = api
        .ok(
            "GET",
            &format!("/runs?limit=10&ending_before={}", newest_first[10]),
            None,
        )
        .await;
    assert_eq!(ids(&back), newest_first[0..10]);
    assert_eq!(back["has_more"], false);
    let back = api
        .ok(
            "GET",
            &format!("/runs?limit=3&ending_before={}", newest_first[4]),
            None,
        )
        .await;
    assert_eq!(ids(&back), newest_first[1..4]);
    assert_eq!(back["has_more"], true);

    let default = api.ok("GET", "/runs", None).await;
    assert_eq!(ids(&default).len(), 10, "default limit");

    // Filters combine with cursors.
    let odd = api.ok("GET", "/runs?image=odd&limit=100", None).await;
    assert_eq!(ids(&odd).len(), 12);
    let odd_page = api
        .ok(
            "GET",
            &format!("/runs?image=odd&limit=5&starting_after={}", ids(&odd)[4]),
            None,
        )
        .await;
    assert_eq!(ids(&odd_page), ids(&odd)[5..10]);

    // created[...] filters in UNIX seconds: run i was created at t0 + i seconds.
    let t0 = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    let window = api
        .ok(
            "GET",
            &format!(
                "/runs?limit=100&created[gte]={}&created[lt]={}",
                t0 + 5,
                t0 + 8
            ),
            None,
        )
        .await;
    assert_eq!(
        ids(&window),
        vec![created[7].clone(), created[6].clone(), created[5].clone()]
    );
    let window = api
        .ok(
            "GET",
            &format!(
                "/runs?limit=100&created[gt]={}&created[lte]={}",
                t0 + 5,
                t0 + 8
            ),
            None,
        )
        .await;
    assert_eq!(
        ids(&window),
        vec![created[8].clone(), created[7].clone(), created[6].clone()]
    );
    let (status, body) = api
        .call("GET", "/runs?created[gte]=99999999999999", None)
        .await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::BAD_REQUEST, "Invalid created timestamp")
    );
    let (status, _) = api.call("GET", "/runs?created[gte]=yesterday", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn run_listing_filters_and_parameter_errors() {
    let api = Api::new().await;
    api.heartbeat("w1", 4, 8192).await;
    api.ok(
        "POST",
        "/definitions",
        Some(definition("1.0.0", "resize:1")),
    )
    .await;
    let from_def = api
        .ok(
            "POST",
            "/definitions/resize/runs",
            Some(json!({"inputs": {"width": 3}})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.claim("w1", 1).await;
    let pending = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let assigned = api.ok("GET", "/runs?state=ASSIGNED", None).await;
    assert_eq!(ids(&assigned), vec![from_def.clone()]);
    let by_status = api.ok("GET", "/runs?status=PENDING", None).await;
    assert_eq!(ids(&by_status), vec![pending.clone()]);
    let both = api
        .ok("GET", "/runs?status=PENDING&state=PENDING", None)
        .await;
    assert_eq!(ids(&both), vec![pending.clone()]);
    let by_def = api.ok("GET", "/runs?op_definition=resize", None).await;
    assert_eq!(ids(&by_def), vec![from_def.clone()]);

    let cases = [
        (
            "/runs?state=PENDING&status=RUNNING",
            StatusCode::BAD_REQUEST,
            "state and status must match",
        ),
        (
            "/runs?state=pending",
            StatusCode::BAD_REQUEST,
            "Invalid state 'pending'",
        ),
        (
            "/runs?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 100",
        ),
        (
            "/runs?limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 100",
        ),
        ("/runs?limit=ten", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
        (
            "/runs?starting_after=nope",
            StatusCode::BAD_REQUEST,
            "starting_after: no OpRun with id 'nope'",
        ),
        (
            "/runs?ending_before=nope",
            StatusCode::BAD_REQUEST,
            "ending_before",
        ),
        (
            "/runs?starting_after=a&ending_before=b",
            StatusCode::BAD_REQUEST,
            "cannot be used together",
        ),
    ];
    for (uri, expected, fragment) in cases {
        let (status, body) = api.call("GET", uri, None).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert!(detail(&body).contains(fragment), "{uri}: {body}");
    }
}

#[tokio::test]
async fn workers_heartbeat_and_go_inactive() {
    let api = Api::new().await;
    let worker = api
        .ok(
            "POST",
            "/workers/heartbeat",
            Some(json!({
                "worker_id": "worker-gpu-01",
                "resources": {"cpu_cores": 8, "ram_mb": 32768, "gpus": [{"id": 0, "vram_mb": 8192, "tags": ["cuda"]}]},
                "tags": ["gpu", "high-mem"],
                "running_ops": []
            })),
        )
        .await;
    assert_eq!(worker["id"], "worker-gpu-01");
    assert_eq!(worker["active"], true);
    assert_eq!(worker["resources"]["gpus"][0]["tags"], json!(["cuda"]));
    let first_seen = worker["created_at"].clone();

    api.advance(61);
    let workers = api.ok("GET", "/workers", None).await;
    assert_eq!(
        workers[0]["active"], false,
        "silent for longer than the worker timeout"
    );
    let worker = api
        .ok(
            "POST",
            "/workers/heartbeat",
            Some(json!({"worker_id": "worker-gpu-01", "resources": {"cpu_cores": 8, "ram_mb": 32768}})),
        )
        .await;
    assert_eq!(worker["active"], true);
    assert_eq!(worker["created_at"], first_seen);
    assert_ne!(worker["last_heartbeat_at"], worker["created_at"]);

    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(json!({"worker_id": " ", "resources": {"cpu_cores": 1, "ram_mb": 1}})),
        )
        .await;
    assert_eq!(
        (status, detail(&body)),
        (StatusCode::BAD_REQUEST, "worker_id must not be empty")
    );
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(json!({"worker_id": "w"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&body).contains("resources"));
}

#[tokio::test]
async fn claims_follow_priority_and_free_capacity() {
    let api = Api::new().await;
    assert!(
        api.claim("ghost", 5).await.is_empty(),
        "a worker without a heartbeat gets nothing"
    );
    api.heartbeat("w1", 2, 4096).await;
    let low = api
        .create_run(json!({"image": "x", "priority": 1, "constraints": {"cpu": 1}}))
        .await;
    api.advance(1);
    let high = api
        .create_run(json!({"image": "x", "priority": 9, "constraints": {"cpu": 1}}))
        .await;
    api.advance(1);
    let big = api
        .create_run(json!({"image": "x", "priority": 8, "constraints": {"ram_mb": 8192}}))
        .await;
    api.advance(1);
    let mid = api
        .create_run(json!({"image": "x", "priority": 5, "constraints": {"cpu": 1}}))
        .await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();

    assert_eq!(
        api.claim("w1", 1).await,
        vec![id(&high)],
        "max defaults to one, highest priority first"
    );
    assert_eq!(
        api.claim("w1", 10).await,
        vec![id(&mid)],
        "the 8 GB run never fits; the CPU is then full"
    );
    assert!(api.claim("w1", 10).await.is_empty());

    api.event(&id(&high), json!({"type": "COMPLETED", "msg": "ok"}))
        .await;
    assert_eq!(
        api.claim("w1", 10).await,
        vec![id(&low)],
        "a finished run frees its CPU"
    );

    api.heartbeat("big", 1, 16384).await;
    assert_eq!(api.claim("big", 10).await, vec![id(&big)]);

    for uri in [
        "/workers/w1/claim?max=0",
        "/workers/w1/claim?max=101",
        "/workers/w1/claim?max=x",
    ] {
        let (status, _) = api.call("POST", uri, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
    }
}

#[tokio::test]
async fn a_claimed_gpu_run_names_the_gpu_the_host_placed_it_on() {
    let api = Api::new().await;
    // GPU 0 has 8 GB, GPU 1 has 4 GB: a 3 GB run goes on the tightest GPU that holds it.
    api.heartbeat_with_gpus("g", 4, 8192, &[8_000, 4_000]).await;
    let small = api
        .create_run(json!({"image": "x", "priority": 2, "constraints": {"vram_mb": 3000}}))
        .await;
    let large = api
        .create_run(json!({"image": "x", "priority": 1, "constraints": {"vram_mb": 6000}}))
        .await;
    let cpu_only = api
        .create_run(json!({"image": "x", "priority": 0, "constraints": {"cpu": 1}}))
        .await;
    let answer = api.ok("POST", "/workers/g/claim?max=3", None).await;
    let ops = answer["ops"].as_array().unwrap();
    let placed: Vec<(&str, &Value)> = ops
        .iter()
        .map(|op| (op["id"].as_str().unwrap(), &op["gpu_id"]))
        .collect();
    assert_eq!(
        placed,
        [
            (small["id"].as_str().unwrap(), &json!(1)),
            (large["id"].as_str().unwrap(), &json!(0)),
            (cpu_only["id"].as_str().unwrap(), &Value::Null),
        ],
        "each VRAM run names its GPU; a run without VRAM names none: {answer}"
    );
}

#[tokio::test]
async fn concurrent_claims_never_share_a_run() {
    let api = Arc::new(Api::new().await);
    for w in 0..8 {
        api.heartbeat(&format!("w{w}"), 64, 1 << 20).await;
    }
    let mut created = Vec::new();
    for _ in 0..60 {
        created.push(
            api.create_run(json!({"image": "x"})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..10 {
                mine.extend(api.claim(&format!("w{w}"), 3).await);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(before, claimed.len(), "a run was handed to two claims");
    created.sort();
    assert_eq!(claimed, created, "every run was claimed");
}

#[tokio::test]
async fn openapi_document_describes_the_api() {
    let api = Api::new().await;
    let doc = api.ok("GET", "/openapi.json", None).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/runs",
        "/runs/{id}/events",
        "/definitions/{name}/runs",
        "/workers/{id}/claim",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

#[tokio::test]
async fn data_survives_reopening_the_store() {
    let api = Api::new().await;
    api.ok(
        "POST",
        "/definitions",
        Some(definition("1.0.0", "resize:1")),
    )
    .await;
    let run = api.create_run(json!({"image": "x"})).await;
    let path = api.dir.path().join("gyoza.db");
    let reopened = SqliteStore::open(&path).await.unwrap();
    use gyoza_host::store::StoreRead;
    let stored = reopened
        .get_run(run["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.image, "x");
    assert_eq!(reopened.list_definitions().await.unwrap().len(), 1);
}
