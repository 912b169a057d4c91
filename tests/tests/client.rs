//! End-to-end: the typed client against the real server process (no Docker needed).

use gyoza_core::api::{AddEventRequest, OpRunCreate};
use gyoza_core::client::{Client, ClientError, RunFilter};
use gyoza_core::{EventType, OpRunState};
use gyoza_e2e::Server;
use serde_json::{Map, json};

fn run(image: &str) -> OpRunCreate {
    OpRunCreate {
        image: image.into(),
        priority: 5,
        inputs: Map::new(),
        constraints: None,
        retry_policy: None,
        event_delivery: None,
        queue: None,
        labels: None,
        preemptible: None,
    }
}

#[tokio::test]
async fn errors_carry_the_status_and_the_servers_detail() {
    let server = Server::start();
    let anonymous = Client::new(&server.url, None).expect("client");
    assert_eq!(anonymous.health().await.expect("health").status, "ok");
    let err = anonymous.list_workers().await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    assert!(
        err.detail().unwrap_or_default().contains("X-API-Key"),
        "{err}"
    );

    let client = server.client();
    let err = client.get_run("no-such-run").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(err.detail(), Some("OpRun 'no-such-run' not found"));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("/runs/no-such-run"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_in_the_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let client = Client::new(&format!("http://127.0.0.1:{port}"), Some("k")).expect("client");
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().starts_with(&format!(
            "cannot reach the gyoza server at http://127.0.0.1:{port}/health"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn runs_round_trip_through_every_run_endpoint() {
    let server = Server::start();
    let client = server.client();
    let created = client.create_run(&run("img:1")).await.expect("create");
    assert_eq!(created.state, OpRunState::Pending);
    let page = client
        .list_runs(&RunFilter {
            state: Some("PENDING".into()),
            limit: Some(5),
            ..RunFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.data.len(), 1);
    let view = client
        .add_event(
            &created.id,
            &AddEventRequest {
                event_type: "INFO".into(),
                msg: json!("hello"),
                payload: None,
                attempt: None,
            },
        )
        .await
        .expect("event");
    assert_eq!(view.events.len(), 1);
    let events = client
        .poll_events(&created.id, Some(-1))
        .await
        .expect("poll");
    assert_eq!(events.events[0].event_type, EventType::Info);
    let cancelled = client.cancel_run(&created.id).await.expect("cancel");
    assert_eq!(cancelled.state, OpRunState::Cancelled);
    let err = client.cancel_run(&created.id).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    let retried = client.retry_run(&created.id).await.expect("retry");
    assert_eq!(retried.current_attempt, 2);
    assert_eq!(
        client
            .get_attempts(&created.id)
            .await
            .expect("attempts")
            .len(),
        2
    );
    assert!(client.openapi().await.expect("openapi")["paths"].is_object());
}
