//! A full disk under the SQLite group commit. When a write of a group fails with
//! `SQLITE_FULL`, SQLite rolls the whole transaction back on its own; the writes of the group
//! done before it are lost, and the ones after it must not commit on their own while the group
//! answers an error. The database's size is capped with `max_page_count` (the store's test
//! option) so that a burst of concurrent creates crosses the limit inside groups.

pub mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::{Api, detail};
use futures_util::future::join_all;
use gyoza_host::error::STORAGE_FULL_DETAIL;
use gyoza_host::store::SqliteOptions;
use serde_json::json;

/// Runs of the burst: each carries its number and about 1.5 KB of padding (a page holds two).
const BURST: usize = 300;

/// The `n` of each run stored in the database file, read through a connection of its own
/// (what a restarted server would find).
fn stored_numbers(api: &Api) -> BTreeSet<u64> {
    let conn = rusqlite::Connection::open(api.dir.path().join("gyoza.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT json_extract(doc, '$.inputs.n') FROM runs")
        .unwrap();
    stmt.query_map([], |row| row.get::<_, u64>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_database_answers_507_and_stores_exactly_the_writes_it_acknowledged() {
    // The schema takes about 15 pages; 60 leave room for some of the burst, not all of it.
    let (api, store) = Api::with_sqlite_options(SqliteOptions {
        max_page_count: Some(60),
    })
    .await;
    let padding = "x".repeat(1500);
    let answers = join_all((0..BURST).map(|n| {
        let body = json!({"image": "x", "inputs": {"n": n, "padding": padding}});
        let api = &api;
        async move { (n, api.call("POST", "/runs", Some(body)).await) }
    }))
    .await;
    let mut acknowledged = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for (n, (status, answer)) in answers {
        match status {
            StatusCode::CREATED => {
                acknowledged.insert(u64::try_from(n).unwrap());
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(detail(&answer), STORAGE_FULL_DETAIL);
                refused.insert(u64::try_from(n).unwrap());
            }
            other => panic!("run {n}: {other} {answer}; a full disk answers 201 or 507"),
        }
    }
    assert!(
        !acknowledged.is_empty() && !refused.is_empty(),
        "the burst crosses the limit: {} stored, {} refused",
        acknowledged.len(),
        refused.len()
    );
    let stored = stored_numbers(&api);
    let refused_but_stored: Vec<_> = refused.intersection(&stored).collect();
    assert!(
        refused_but_stored.is_empty(),
        "runs answered 507 yet stored: {refused_but_stored:?}"
    );
    assert_eq!(stored, acknowledged, "every run answered 201 is stored");

    // Still full: the next writes are refused the same way (one or two may still fit in the
    // pages the burst's refused writes left free), and reads are served.
    let mut refused_again = false;
    for n in BURST + 1..BURST + 51 {
        let body = json!({"image": "x", "inputs": {"n": n, "padding": padding}});
        let (status, answer) = api.call("POST", "/runs", Some(body)).await;
        match status {
            StatusCode::CREATED => {
                acknowledged.insert(u64::try_from(n).unwrap());
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(detail(&answer), STORAGE_FULL_DETAIL);
                refused_again = true;
                break;
            }
            other => panic!("run {n}: {other} {answer}; a full disk answers 201 or 507"),
        }
    }
    assert!(
        refused_again,
        "50 more writes were all stored: the database was not full"
    );
    assert_eq!(
        stored_numbers(&api),
        acknowledged,
        "every run answered 201 is stored"
    );
    let page = api.ok("GET", "/runs?limit=100", None).await;
    assert!(!page["data"].as_array().unwrap().is_empty());

    // Space is back: the same server stores again.
    store.set_max_page_count(1_000_000).await.unwrap();
    let run = api
        .create_run(json!({"image": "x", "inputs": {"n": BURST, "padding": padding}}))
        .await;
    let id = run["id"].as_str().unwrap();
    api.ok("GET", &format!("/runs/{id}"), None).await;
    assert!(stored_numbers(&api).contains(&u64::try_from(BURST).unwrap()));
}

#[tokio::test]
async fn a_batch_that_does_not_fit_answers_507_and_stores_none_of_it() {
    let (api, _store) = Api::with_sqlite_options(SqliteOptions {
        max_page_count: Some(60),
    })
    .await;
    let padding = "x".repeat(1500);
    // One run fits; a hundred do not.
    let (status, answer) = api
        .call(
            "POST",
            "/runs/batch",
            Some(json!({"runs": [{"image": "x", "inputs": {"n": 0}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let runs: Vec<_> = (1..=100)
        .map(|n| json!({"image": "x", "inputs": {"n": n, "padding": padding}}))
        .collect();
    let (status, answer) = api
        .call("POST", "/runs/batch", Some(json!({"runs": runs})))
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{answer}");
    assert_eq!(detail(&answer), STORAGE_FULL_DETAIL);
    assert_eq!(stored_numbers(&api), BTreeSet::from([0]));
}
