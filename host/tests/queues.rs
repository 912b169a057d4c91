//! Queues, labels and preemptible on definitions and runs, on both stores: they round-trip,
//! a run inherits its definition's (its own labels added over them), a body without them
//! (a client written for the original server) gets the defaults, and bad values are refused
//! with a 400 that names them, storing nothing.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail};
use serde_json::{Value, json};

on_both_stores! {
    they_round_trip_and_runs_inherit_them => they_round_trip_and_runs_inherit_them;
    runs_are_listed_by_queue_and_label => runs_are_listed_by_queue_and_label;
}

fn definition() -> Value {
    json!({
        "id": "train",
        "version": "1.0.0",
        "image": "train:1",
        "queue": "gpu",
        "labels": {"team": "vision", "tier": "batch"},
        "preemptible": true
    })
}

async fn they_round_trip_and_runs_inherit_them(api: Api) {
    let stored = api.ok("POST", "/definitions", Some(definition())).await;
    assert_eq!(stored["queue"], "gpu");
    let shown = api
        .ok("GET", "/definitions/train?version=1.0.0", None)
        .await;
    assert_eq!(shown["labels"], json!({"team": "vision", "tier": "batch"}));
    assert_eq!(shown["preemptible"], true);

    // Inherited as they are.
    let inherited = api
        .ok("POST", "/definitions/train/runs", Some(json!({})))
        .await;
    let inherited = api
        .ok(
            "GET",
            &format!("/runs/{}", inherited["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(inherited["queue"], "gpu");
    assert_eq!(
        inherited["labels"],
        json!({"team": "vision", "tier": "batch"})
    );
    assert_eq!(inherited["preemptible"], true);

    // Overridden: the queue and preemptible replaced, the labels added over.
    let own = api
        .ok(
            "POST",
            "/definitions/train/runs",
            Some(json!({"queue": "urgent", "labels": {"tier": "online", "run": "7"}, "preemptible": false})),
        )
        .await;
    let own = api
        .ok(
            "GET",
            &format!("/runs/{}", own["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(own["queue"], "urgent");
    assert_eq!(
        own["labels"],
        json!({"team": "vision", "tier": "online", "run": "7"})
    );
    assert_eq!(own["preemptible"], false);

    // An ad-hoc run with its own, read back from the store and in the list.
    let adhoc = api
        .create_run(
            json!({"image": "x", "queue": "cpu", "labels": {"team": "nlp"}, "preemptible": true}),
        )
        .await;
    let id = adhoc["id"].as_str().unwrap();
    let listed = api.ok("GET", "/runs?limit=100", None).await;
    let listed = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .expect("listed");
    for view in [api.ok("GET", &format!("/runs/{id}"), None).await, listed] {
        assert_eq!(view["queue"], "cpu");
        assert_eq!(view["labels"], json!({"team": "nlp"}));
        assert_eq!(view["preemptible"], true);
    }
}

#[tokio::test]
async fn a_body_without_them_gets_the_defaults() {
    let api = Api::new().await;
    let run = api.create_run(json!({"image": "x"})).await;
    assert_eq!(run["queue"], "default");
    assert_eq!(run["labels"], json!({}));
    assert_eq!(run["preemptible"], false);
    let mut plain = definition();
    for field in ["queue", "labels", "preemptible"] {
        plain.as_object_mut().unwrap().remove(field);
    }
    let stored = api.ok("POST", "/definitions", Some(plain)).await;
    assert_eq!(stored["queue"], "default");
    let run = api
        .ok("POST", "/definitions/train/runs", Some(json!({})))
        .await;
    assert_eq!(run["queue"], "default");
    assert_eq!(run["preemptible"], false);
}

#[tokio::test]
async fn bad_queues_and_labels_are_refused_and_nothing_is_stored() {
    let api = Api::new().await;
    api.ok("POST", "/definitions", Some(definition())).await;
    let many: serde_json::Map<String, Value> =
        (0..33).map(|n| (format!("k{n}"), json!("v"))).collect();
    let cases = [
        (json!({"queue": ""}), "queue must not be empty"),
        (json!({"queue": "a b"}), "queue 'a b' may hold only"),
        (
            json!({"queue": "q".repeat(65)}),
            "queue must be at most 64 bytes",
        ),
        (
            json!({"labels": many}),
            "labels (entries) must be at most 32, got 3",
        ),
        (
            json!({"labels": {"team:x": "a"}}),
            "label key 'team:x' may hold only",
        ),
        (
            json!({"labels": {"": "a"}}),
            "a label key must not be empty",
        ),
        (
            json!({"labels": {"k".repeat(64): "a"}}),
            "a label key must be at most 63 bytes",
        ),
        (
            json!({"labels": {"team": "v".repeat(257)}}),
            "label 'team' must be at most 256 bytes",
        ),
        (
            json!({"labels": {"team": "a\nb"}}),
            "must not hold control characters",
        ),
    ];
    for (fields, expected) in cases {
        let mut adhoc = json!({"image": "x"});
        let mut from_definition = json!({});
        let mut new_definition = definition();
        for body in [&mut adhoc, &mut from_definition, &mut new_definition] {
            for (key, value) in fields.as_object().unwrap() {
                body[key] = value.clone();
            }
        }
        new_definition["version"] = json!("2.0.0");
        for (uri, body) in [
            ("/runs", adhoc),
            ("/definitions/train/runs", from_definition),
            ("/definitions", new_definition),
        ] {
            let (status, answer) = api.call("POST", uri, Some(body.clone())).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "POST {uri} {body}: {answer}"
            );
            assert!(
                detail(&answer).contains(expected),
                "POST {uri} {body}: {answer}"
            );
        }
    }
    // A label value that is not a string, and a preemptible that is not a bool: a body of
    // the wrong shape, 422 as the original server answered, naming the field.
    for (body, field) in [
        (json!({"image": "x", "labels": {"team": 1}}), "labels.team"),
        (json!({"image": "x", "preemptible": "yes"}), "preemptible"),
    ] {
        let (status, answer) = api.call("POST", "/runs", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(detail(&answer).contains(field), "{body}: {answer}");
    }
    let runs = api.ok("GET", "/runs", None).await;
    assert_eq!(runs["data"], json!([]), "nothing stored");
    let (status, _) = api
        .call("GET", "/definitions/train?version=2.0.0", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no definition stored");
}

/// The ids of `GET /runs?{filter}` walked page by page (`limit=1`) forwards, then back.
async fn walk(api: &Api, filter: &str) -> Vec<String> {
    let mut forward = Vec::new();
    let mut uri = format!("/runs?limit=1&{filter}");
    loop {
        let page = api.ok("GET", &uri, None).await;
        let data = page["data"].as_array().unwrap();
        forward.extend(data.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        if page["has_more"] != true {
            break;
        }
        uri = format!(
            "/runs?limit=1&{filter}&starting_after={}",
            forward.last().unwrap()
        );
    }
    // And back from the oldest: the same runs.
    let mut back = vec![forward.last().cloned().unwrap_or_default()];
    loop {
        let uri = format!(
            "/runs?limit=1&{filter}&ending_before={}",
            back.last().unwrap()
        );
        let page = api.ok("GET", &uri, None).await;
        let data = page["data"].as_array().unwrap();
        back.extend(data.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        if page["has_more"] != true {
            break;
        }
    }
    if !forward.is_empty() {
        back.reverse();
        assert_eq!(back, forward, "the same runs backwards for {filter}");
    }
    forward
}

async fn runs_are_listed_by_queue_and_label(api: Api) {
    let mut made = Vec::new();
    for (queue, labels) in [
        ("gpu", json!({"team": "vision", "a.b/c": "1"})),
        ("cpu", json!({"team": "vision"})),
        ("gpu", json!({"team": "nlp"})),
        ("default", json!({})),
        ("gpu", json!({"team": "vision"})),
    ] {
        let run = api
            .create_run(json!({"image": "x", "queue": queue, "labels": labels}))
            .await;
        made.push(run["id"].as_str().unwrap().to_owned());
        api.advance(1);
    }
    // Newest first.
    let newest = |picked: &[usize]| {
        picked
            .iter()
            .rev()
            .map(|&i| made[i].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(walk(&api, "queue=gpu").await, newest(&[0, 2, 4]));
    assert_eq!(walk(&api, "label=team:vision").await, newest(&[0, 1, 4]));
    assert_eq!(
        walk(&api, "queue=gpu&label=team:vision").await,
        newest(&[0, 4])
    );
    assert_eq!(walk(&api, "label=a.b/c:1").await, newest(&[0]));
    assert_eq!(walk(&api, "queue=default").await, newest(&[3]));
    assert_eq!(walk(&api, "queue=gpu&state=RUNNING").await, newest(&[]));
    assert_eq!(walk(&api, "label=team:").await, newest(&[]));
    assert_eq!(walk(&api, "queue=none").await, newest(&[]));
    for bad in ["label=team", "label=:x", "label=a%22b:x", "label=a%27)--:x"] {
        let (status, answer) = api.call("GET", &format!("/runs?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert!(detail(&answer).contains("'label'"), "{bad}: {answer}");
    }
}
