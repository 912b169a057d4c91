//! Following a run live: its Server-Sent Events stream (`GET /runs/{id}/events/stream`),
//! resumed with `Last-Event-ID` when the connection drops.

use std::time::Duration;

use anyhow::{Context, bail};
use gyoza_core::client::Client;
use serde_json::Value;

/// How often a dropped stream is reopened before giving up.
const RECONNECTS: usize = 10;

/// Calls `on_event` with each event of the run (every attempt, in order) until the run is
/// terminal; returns the terminal state.
pub async fn follow(
    client: &Client,
    run_id: &str,
    mut on_event: impl FnMut(&Value),
) -> anyhow::Result<String> {
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let path = ["runs", run_id, "events", "stream"];
        let response = match client.stream(&path, &[], last_id.as_deref()).await {
            Ok(response) => response,
            Err(e) if e.is_transient() && failures < RECONNECTS => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut response = response;
        let mut buffer = String::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) if failures < RECONNECTS => break,
                Err(e) => return Err(e).context("the event stream broke"),
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (id, kind, data) = parse_block(&block);
                if kind.as_deref() == Some("end") {
                    let state: Value = serde_json::from_str(&data).unwrap_or_default();
                    return Ok(state["state"].as_str().unwrap_or("UNKNOWN").to_owned());
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let event: Value = serde_json::from_str(&data)
                    .with_context(|| format!("bad event from the server: {data}"))?;
                on_event(&event);
                if id.is_some() {
                    last_id = id;
                }
            }
        }
        failures += 1;
        if failures > RECONNECTS {
            bail!("the event stream of run {run_id} kept dropping; giving up");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `id`, `event` and joined `data` fields of one SSE block.
fn parse_block(block: &str) -> (Option<String>, Option<String>, String) {
    let (mut id, mut kind, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => kind = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (id, kind, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::parse_block;

    #[test]
    fn sse_blocks_are_parsed() {
        let (id, kind, data) = parse_block("data: {\"a\":1}\nid: 2.3\n\n");
        assert_eq!(
            (id.as_deref(), kind, data.as_str()),
            (Some("2.3"), None, "{\"a\":1}")
        );
        let (_, kind, data) = parse_block("event: end\ndata: {\"state\":\"FAILED\"}\n\n");
        assert_eq!(
            (kind.as_deref(), data.as_str()),
            (Some("end"), "{\"state\":\"FAILED\"}")
        );
        assert_eq!(parse_block(":keep-alive\n\n").2, "");
    }
}
