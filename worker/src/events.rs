//! The container's side of the protocol: output lines, `GYOZA_EVENT` lines, the log tail.
//!
//! A stdout line `GYOZA_EVENT {"type":"PROGRESS","msg":40}` becomes an event of the run;
//! INFO, PROGRESS and ERROR are accepted (an op cannot declare itself STARTED or COMPLETED:
//! the worker decides that from the container's exit). Every other line is the run's log.
//! Output arrives in chunks that do not respect line ends, so [`LineSplitter`] reassembles
//! lines; an endless line is cut so that a container cannot exhaust the worker's memory.

use std::collections::VecDeque;

use gyoza_core::EventType;
use gyoza_core::api::AddEventRequest;
use serde_json::{Map, Value};

/// What starts an event line.
pub const EVENT_PREFIX: &str = "GYOZA_EVENT ";

/// Longest line kept whole; the rest of a longer line starts a new one.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reads an event line; `Ok(None)` for an ordinary log line, `Err` for a line that starts
/// like an event but is not a valid one (the message says why, for the run's log).
pub fn parse_event_line(line: &str) -> Result<Option<AddEventRequest>, String> {
    let Some(body) = line.trim_start().strip_prefix(EVENT_PREFIX) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(body.trim())
        .map_err(|e| format!("ignored GYOZA_EVENT line: not JSON ({e})"))?;
    let Value::Object(mut object) = value else {
        return Err("ignored GYOZA_EVENT line: expected a JSON object".into());
    };
    let event_type = match object.remove("type") {
        Some(Value::String(t)) => t.to_ascii_uppercase(),
        _ => return Err("ignored GYOZA_EVENT line: \"type\" must be a string".into()),
    };
    match event_type.parse::<EventType>() {
        Ok(EventType::Info | EventType::Progress | EventType::Error) => {}
        _ => {
            return Err(format!(
                "ignored GYOZA_EVENT line: type '{event_type}' is not one a container may send (INFO, PROGRESS, ERROR)"
            ));
        }
    }
    let payload = match object.remove("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(payload)) => Some(payload),
        Some(_) => return Err("ignored GYOZA_EVENT line: \"payload\" must be an object".into()),
    };
    Ok(Some(AddEventRequest {
        event_type,
        msg: object.remove("msg").unwrap_or(Value::String(String::new())),
        payload,
        attempt: None,
    }))
}

/// Reassembles lines from chunks of output.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds a chunk; returns the lines it completed (without their `\n` or `\r\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                lines.push(self.take());
            } else {
                self.pending.push(byte);
                if self.pending.len() >= MAX_LINE_BYTES {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// The unterminated last line, if any (at the end of the output).
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        if line.ends_with('\r') {
            line.pop();
        }
        line
    }
}

/// The last lines of a run's output, for failure messages.
#[derive(Debug)]
pub struct LogTail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl LogTail {
    /// Keeps the last `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds a line, forgetting the oldest when full.
    pub fn push(&mut self, line: &str) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        // Each line is capped again here: a failure message must stay readable.
        let line = match line.char_indices().nth(500) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line.to_owned(),
        };
        self.lines.push_back(line);
    }

    /// The kept lines, oldest first, joined by newlines.
    pub fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether no line was kept.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// An event payload from `(key, value)` pairs.
pub fn payload<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_lines_become_events() {
        let event = parse_event_line(r#"GYOZA_EVENT {"type":"PROGRESS","msg":40}"#)
            .unwrap()
            .unwrap();
        assert_eq!(event.event_type, "PROGRESS");
        assert_eq!(event.msg, json!(40));
        let event =
            parse_event_line(r#"  GYOZA_EVENT {"type":"info","msg":"hi","payload":{"k":1}}"#)
                .unwrap()
                .unwrap();
        assert_eq!(event.event_type, "INFO");
        assert_eq!(event.payload.unwrap()["k"], json!(1));
    }

    #[test]
    fn other_lines_are_logs_and_bad_events_are_explained() {
        assert!(parse_event_line("hello").unwrap().is_none());
        assert!(
            parse_event_line("GYOZA_EVENTS are great")
                .unwrap()
                .is_none()
        );
        let err = parse_event_line("GYOZA_EVENT {nope").unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        let err = parse_event_line(r#"GYOZA_EVENT {"type":"COMPLETED"}"#).unwrap_err();
        assert!(err.contains("COMPLETED"), "{err}");
        let err = parse_event_line(r#"GYOZA_EVENT [1]"#).unwrap_err();
        assert!(err.contains("object"), "{err}");
    }

    #[test]
    fn lines_are_reassembled_across_chunks() {
        let mut splitter = LineSplitter::default();
        assert!(splitter.push(b"hel").is_empty());
        assert_eq!(splitter.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(splitter.push(b"ld\n\n"), vec!["world", ""]);
        assert_eq!(splitter.push(b"tail"), Vec::<String>::new());
        assert_eq!(splitter.finish().as_deref(), Some("tail"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn endless_lines_are_cut() {
        let mut splitter = LineSplitter::default();
        let lines = splitter.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 10]);
        assert_eq!(lines.len(), 2);
        assert_eq!(splitter.finish().map(|l| l.len()), Some(10));
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut tail = LogTail::new(2);
        assert!(tail.is_empty());
        for line in ["a", "b", "c"] {
            tail.push(line);
        }
        assert_eq!(tail.text(), "b\nc");
    }
}
