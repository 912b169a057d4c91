//! End-to-end: a webhook receiver that is down while the server crashes still gets every
//! event, once and in order.
//!
//! A real server process on SQLite, killed with SIGKILL and started again on its data; a
//! worker played over HTTP (heartbeat, claim, events: making events needs no container); a
//! real HTTP receiver on a TCP socket that nothing listens on until after the crash.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyoza_core::Resources;
use gyoza_core::api::{AddEventRequest, HeartbeatRequest};
use gyoza_core::resources::EventDelivery;
use gyoza_e2e::{API_KEY, Server, free_port, image_run};
use serde_json::{Value, json};

/// What the receiver got, in arrival order.
type Received = Arc<Mutex<Vec<Value>>>;

/// Reads one HTTP request's JSON body from `stream` and answers 200 (closing the
/// connection).
fn answer(stream: std::net::TcpStream) -> Option<Value> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .ok()?;
    serde_json::from_slice(&body).ok()
}

/// A real HTTP receiver on `listener`, recording every JSON body it is POSTed.
fn receive(listener: TcpListener) -> Received {
    let received: Received = Arc::default();
    let recorded = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(body) = answer(stream) {
                recorded.lock().unwrap().push(body);
            }
        }
    });
    received
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_while_the_server_crashes_still_gets_every_event_once_in_order() {
    const INFOS: usize = 30;
    let data = tempfile::tempdir().unwrap();
    let (port, hook_port) = (free_port(), free_port());
    let flags = ["--delivery-allow", "127.0.0.1"];
    let mut server = Server::start_at(data.path(), port, API_KEY, &flags);
    let client = server.client();
    client
        .heartbeat(&HeartbeatRequest {
            worker_id: "hook-worker".into(),
            resources: Resources {
                cpu_cores: 4,
                ram_mb: 4096,
                gpus: vec![],
            },
            tags: vec![],
            running_ops: None,
            instance: None,
        })
        .await
        .unwrap();
    let mut create = image_run("x", serde_json::Map::new());
    create.event_delivery = Some(EventDelivery {
        topic: format!("http://127.0.0.1:{hook_port}/hook"),
        attributes: object(json!({"team": "imaging"})),
    });
    let run = client.create_run(&create).await.unwrap();
    let claimed = client.claim("hook-worker", 1).await.unwrap();
    assert_eq!(claimed[0].id, run.id);
    let event = |kind: &str, msg: Value| AddEventRequest {
        event_type: kind.into(),
        msg,
        payload: Some(object(json!({"worker_id": "hook-worker"}))),
        attempt: Some(1),
    };
    client
        .add_event(&run.id, &event("STARTED", json!("")))
        .await
        .unwrap();
    for n in 0..INFOS {
        client
            .add_event(&run.id, &event("INFO", json!(format!("info {n}"))))
            .await
            .unwrap();
    }
    client
        .add_event(&run.id, &event("COMPLETED", json!("done")))
        .await
        .unwrap();
    // The server tries meanwhile and finds nobody listening; then it crashes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill();

    let received = receive(TcpListener::bind(("127.0.0.1", hook_port)).unwrap());
    let server = Server::start_at(data.path(), port, API_KEY, &flags);
    let total = INFOS + 2;
    let deadline = Instant::now() + Duration::from_secs(90);
    while received.lock().unwrap().len() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} events delivered after the restart:\n{}",
            received.lock().unwrap().len(),
            server.output.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives: no event twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = received.lock().unwrap().clone();
    let positions: Vec<(u64, u64)> = got
        .iter()
        .map(|m| (m["attempt"].as_u64().unwrap(), m["index"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(u64, u64)> = (0..total as u64).map(|i| (1, i)).collect();
    assert_eq!(positions, expected, "every event once, in order");
    assert!(got.iter().all(|m| m["run_id"] == run.id.as_str()));
    assert_eq!(got[0]["event"]["type"], "STARTED");
    assert_eq!(got[total - 1]["event"]["type"], "COMPLETED");
    assert_eq!(got[total - 1]["state"], "COMPLETED");
    assert_eq!(got[1]["attributes"], json!({"team": "imaging"}));
}
