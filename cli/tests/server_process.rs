//! The real `gyoza` binary as a process: start-up errors, SIGKILL durability, SIGTERM.

use std::process::Command;
use std::time::Duration;

use gyoza_e2e::Server;

use serde_json::{Value, json};

const KEY: &str = "process-test-key";

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", KEY.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[test]
fn refuses_to_start_without_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gyoza"))
        .args(["server", "start", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env_remove("GYOZA_API_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GYOZA_API_KEY is not set"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let base = server.url.clone();

    let definition = json!({
        "id": "echo", "version": "1.0.0", "image": "echo:1",
        "input_specs": {"text": {"type": "string", "required": false, "default": "hi"}}
    });
    let (status, _) = send(
        &http,
        reqwest::Method::POST,
        format!("{base}/definitions"),
        Some(definition),
    )
    .await;
    assert_eq!(status, 201);
    send(
        &http,
        reqwest::Method::POST,
        format!("{base}/workers/heartbeat"),
        Some(json!({"worker_id": "w1", "resources": {"cpu_cores": 4, "ram_mb": 4096}})),
    )
    .await;

    // A burst of concurrent creates; every 201 is an acknowledged write.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"inputs": {"text": format!("run {i}")}, "priority": i % 7});
            send(
                &http,
                reqwest::Method::POST,
                format!("{base}/definitions/echo/runs"),
                Some(body),
            )
            .await
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        let (status, run) = task.await.unwrap();
        assert_eq!(status, 201, "{run}");
        acknowledged.push(run);
    }
    // Move a few runs along so that more than inserts must survive.
    let (_, claim) = send(
        &http,
        reqwest::Method::POST,
        format!("{base}/workers/w1/claim?max=3"),
        None,
    )
    .await;
    let claimed: Vec<String> = claim["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(claimed.len(), 3);
    let (status, completed) = send(
        &http,
        reqwest::Method::POST,
        format!("{base}/runs/{}/events", claimed[0]),
        Some(json!({"type": "COMPLETED", "msg": "ok", "payload": {"outputs": {"n": 1}}})),
    )
    .await;
    assert_eq!(status, 200);

    let status = Command::new("kill")
        .args(["-KILL", &server.pid()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(server);

    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let base = server.url.clone();
    for run in &acknowledged {
        let id = run["id"].as_str().unwrap();
        let (status, stored) = send(
            &http,
            reqwest::Method::GET,
            format!("{base}/runs/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "run {id} lost");
        assert_eq!(stored["inputs"], run["inputs"]);
        assert_eq!(stored["created_at"], run["created_at"]);
        let expected = if id == claimed[0] {
            "COMPLETED"
        } else if claimed.iter().any(|c| c == id) {
            "ASSIGNED"
        } else {
            "PENDING"
        };
        assert_eq!(stored["state"], expected, "run {id}");
    }
    let (_, stored) = send(
        &http,
        reqwest::Method::GET,
        format!("{base}/runs/{}", claimed[0]),
        None,
    )
    .await;
    assert_eq!(stored["outputs"], completed["outputs"]);
    let (_, definitions) = send(
        &http,
        reqwest::Method::GET,
        format!("{base}/definitions"),
        None,
    )
    .await;
    assert_eq!(definitions.as_array().unwrap().len(), 1);
    let (_, page) = send(
        &http,
        reqwest::Method::GET,
        format!("{base}/runs?limit=100"),
        None,
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 40);
    let (_, workers) = send(&http, reqwest::Method::GET, format!("{base}/workers"), None).await;
    assert_eq!(workers[0]["id"], "w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let (status, _) = send(
        &client(),
        reqwest::Method::GET,
        format!("{}/health", server.url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    Command::new("kill")
        .args(["-TERM", &server.pid()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = server.try_wait() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
}
