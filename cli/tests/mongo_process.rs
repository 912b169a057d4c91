//! Server processes on a MongoDB store (a real MongoDB-wire-protocol server,
//! `GYOZA_TEST_MONGO_URL`, default `mongodb://127.0.0.1:27117`, started by `scripts/test.sh`):
//! a restarted server finds its data, and two server replicas on one database hand every run
//! to exactly one claimer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gyoza_e2e::Server;
use serde_json::{Value, json};

const KEY: &str = "mongo-test-key";

fn mongo_url() -> String {
    std::env::var("GYOZA_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27117".into())
}

fn skip() -> bool {
    let skip = std::env::var("GYOZA_TEST_SKIP_MONGO").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("GYOZA_TEST_SKIP_MONGO=1: MongoDB process tests left out");
    }
    skip
}

fn fresh_database() -> String {
    format!("gyoza_proc_{}_{}", std::process::id(), chrono_like_now())
}

fn chrono_like_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn mongo_server(data_dir: &std::path::Path, database: &str) -> Server {
    let url = mongo_url();
    Server::start_in(
        env!("CARGO_BIN_EXE_gyoza"),
        data_dir,
        KEY,
        &["--store", &url, "--mongo-db", database],
    )
}

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", KEY.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.expect("request");
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("request");
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_finds_its_data() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database();
    let http = client();
    let server = mongo_server(dir.path(), &database);
    let base = server.url.clone();
    let (status, _) = post(
        &http,
        format!("{base}/definitions"),
        json!({"id": "op", "version": "1", "image": "i"}),
    )
    .await;
    assert_eq!(status, 201);
    let mut created = Vec::new();
    for i in 0..10 {
        let (status, run) = post(
            &http,
            format!("{base}/definitions/op/runs"),
            json!({"inputs": {"i": i}}),
        )
        .await;
        assert_eq!(status, 201);
        created.push(run);
    }
    post(
        &http,
        format!("{base}/workers/heartbeat"),
        json!({"worker_id": "w", "resources": {"cpu_cores": 1, "ram_mb": 1}}),
    )
    .await;
    let (_, claim) = post(&http, format!("{base}/workers/w/claim"), json!(null)).await;
    let claimed = claim["ops"][0]["id"].as_str().unwrap().to_owned();
    std::process::Command::new("kill")
        .args(["-KILL", &server.pid()])
        .status()
        .unwrap();
    drop(server);

    let server = mongo_server(dir.path(), &database);
    let base = server.url.clone();
    for run in &created {
        let id = run["id"].as_str().unwrap();
        let (status, stored) = get(&http, format!("{base}/runs/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(stored["inputs"], run["inputs"]);
        let expected = if id == claimed { "ASSIGNED" } else { "PENDING" };
        assert_eq!(stored["state"], expected);
    }
    let (_, definitions) = get(&http, format!("{base}/definitions")).await;
    assert_eq!(definitions.as_array().unwrap().len(), 1);
    let (_, workers) = get(&http, format!("{base}/workers")).await;
    assert_eq!(workers[0]["id"], "w");
}

/// Sizes of the scale-out test.
const RUNS: usize = 300;
const CLAIMERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_assign_every_run_exactly_once() {
    if skip() {
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let database = fresh_database();
    let replica_a = mongo_server(dir_a.path(), &database);
    let replica_b = mongo_server(dir_b.path(), &database);
    let bases = [replica_a.url.clone(), replica_b.url.clone()];
    let http = client();

    for c in 0..CLAIMERS {
        let base = &bases[c % 2];
        let (status, _) = post(
            &http,
            format!("{base}/workers/heartbeat"),
            json!({"worker_id": format!("claimer-{c}"), "resources": {"cpu_cores": 1000, "ram_mb": 1_000_000}}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut creates = Vec::new();
    for i in 0..RUNS {
        let (http, base) = (http.clone(), bases[i % 2].clone());
        creates.push(tokio::spawn(async move {
            let (status, run) = post(
                &http,
                format!("{base}/runs"),
                json!({"image": "x", "priority": i % 5}),
            )
            .await;
            assert_eq!(status, 201, "{run}");
            run["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut created = Vec::new();
    for task in creates {
        created.push(task.await.unwrap());
    }

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let (http, base) = (http.clone(), bases[c % 2].clone());
        claimers.push(tokio::spawn(async move {
            let worker = format!("claimer-{c}");
            let mut mine = Vec::new();
            let mut empty_in_a_row = 0;
            while empty_in_a_row < 3 && Instant::now() < deadline {
                let (status, answer) = post(
                    &http,
                    format!("{base}/workers/{worker}/claim?max=5"),
                    json!(null),
                )
                .await;
                assert_eq!(status, 200, "{answer}");
                let ops = answer["ops"].as_array().unwrap();
                if ops.is_empty() {
                    empty_in_a_row += 1;
                } else {
                    empty_in_a_row = 0;
                }
                mine.extend(ops.iter().map(|op| op["id"].as_str().unwrap().to_owned()));
            }
            (worker, mine)
        }));
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    for task in claimers {
        let (worker, mine) = task.await.unwrap();
        for id in mine {
            if let Some(other) = owner.insert(id.clone(), worker.clone()) {
                panic!("run {id} was assigned to both {other} and {worker}");
            }
        }
    }
    assert_eq!(owner.len(), RUNS, "every run was claimed, none left behind");
    // The store agrees with what the claimers were told.
    for id in &created {
        let (_, run) = get(&http, format!("{}/runs/{id}", bases[0])).await;
        assert_eq!(run["state"], "ASSIGNED");
        assert_eq!(
            run["execution_summary"]["worker_id"].as_str(),
            owner.get(id).map(String::as_str)
        );
    }
}
