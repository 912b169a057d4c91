//! Results the server has not decided on yet, kept on disk until it does.
//!
//! A run's COMPLETED, FAILED or hand-back is written to `<state-dir>/outbox/` (one file per
//! run and attempt, written durably: temporary file, fsync, rename) *before* it is sent, and
//! the file is removed only when the server answered with a decision (see
//! [`crate::report::deliver_result`]). A worker killed while a result is on its way finds it
//! here at its next start and sends it again. Until its file is gone, the run is reported as
//! held in every heartbeat ([`Outbox::held`]), so that the server's reconcile does not
//! requeue a finished run whose result is on its way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gyoza_core::WorkerOpRun;
use gyoza_core::api::{AddEventRequest, ReleaseRequest};
use gyoza_core::sync::lock;
use serde::{Deserialize, Serialize};

use crate::WorkerError;
use crate::state::write_durably;

/// What a result tells the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// `POST /runs/{id}/events` (COMPLETED or FAILED).
    Event(AddEventRequest),
    /// `POST /runs/{id}/release`.
    Release(ReleaseRequest),
}

/// One undecided result: a run's attempt and what to tell the server about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The run.
    pub run_id: String,
    /// Its attempt (absent for servers that do not number them).
    pub attempt: Option<u32>,
    /// The report.
    pub message: Message,
}

impl Entry {
    /// The file name of this entry: the run id (bytes outside `[A-Za-z0-9_-]` as `%XX`, so
    /// that no id can name a path) and the attempt.
    pub fn file_name(&self) -> String {
        let mut name = String::new();
        for b in self.run_id.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        match self.attempt {
            Some(attempt) => format!("{name}@{attempt}.json"),
            None => format!("{name}@.json"),
        }
    }

    /// The message's type, for logs: `COMPLETED`, `FAILED` or `release`.
    pub fn what(&self) -> &str {
        match &self.message {
            Message::Event(event) => &event.event_type,
            Message::Release(_) => "release",
        }
    }
}

/// The outbox directory and the entries in it.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// File name → entry, for every file in the directory.
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Outbox {
    /// Opens (creating) `dir` and reads the entries a previous life of the worker left. A
    /// file that cannot be read is left where it is, with an error in the log.
    pub fn open(dir: &Path) -> Result<Self, WorkerError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| WorkerError::Io {
                context: format!("cannot create the outbox {}", dir.display()),
                source,
            })?;
        let listing = std::fs::read_dir(dir).map_err(|source| WorkerError::Io {
            context: format!("cannot read the outbox {}", dir.display()),
            source,
        })?;
        let mut entries = BTreeMap::new();
        for file in listing.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let read = std::fs::read(file.path())
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Entry>(&bytes).map_err(|e| e.to_string())
                });
            match read {
                Ok(entry) => {
                    entries.insert(name, entry);
                }
                Err(e) => {
                    tracing::error!(file = %file.path().display(), error = %e, "unreadable outbox entry; left in place")
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: Mutex::new(entries),
        })
    }

    /// Every entry, as found or put.
    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.entries).values().cloned().collect()
    }

    /// The runs whose results are undecided, as a heartbeat reports them.
    pub fn held(&self) -> Vec<WorkerOpRun> {
        lock(&self.entries)
            .values()
            .map(|e| WorkerOpRun {
                id: e.run_id.clone(),
                attempt: e.attempt,
                image: String::new(),
                inputs: serde_json::Map::new(),
                constraints: gyoza_core::Constraints::default(),
                gpu_id: None,
            })
            .collect()
    }

    /// Writes `entry` durably (replacing the run attempt's earlier one) before it is sent.
    pub async fn put(&self, entry: &Entry) -> std::io::Result<()> {
        let name = entry.file_name();
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let dir = self.dir.clone();
        let file = name.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, &file, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        lock(&self.entries).insert(name, entry.clone());
        Ok(())
    }

    /// Forgets `entry`: the server decided on it.
    pub async fn remove(&self, entry: &Entry) {
        let name = entry.file_name();
        lock(&self.entries).remove(&name);
        let path = self.dir.join(&name);
        if let Err(e) = tokio::fs::remove_file(&path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a decided outbox entry (it will be sent again at the next start and refused)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completed(run_id: &str, attempt: Option<u32>) -> Entry {
        Entry {
            run_id: run_id.into(),
            attempt,
            message: Message::Event(AddEventRequest {
                event_type: "COMPLETED".into(),
                msg: json!("Completed"),
                payload: Some(serde_json::Map::from_iter([(
                    "outputs".to_owned(),
                    json!({"x": 1}),
                )])),
                attempt,
            }),
        }
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_until_removed_and_ids_cannot_name_paths() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
        let one = completed("run-1", Some(2));
        let odd = completed("../../etc/x y", None);
        outbox.put(&one).await.unwrap();
        outbox.put(&odd).await.unwrap();
        assert_eq!(odd.file_name(), "%2E%2E%2F%2E%2E%2Fetc%2Fx%20y@.json");
        let held: Vec<_> = outbox
            .held()
            .into_iter()
            .map(|r| (r.id, r.attempt))
            .collect();
        assert!(held.contains(&("run-1".into(), Some(2))), "{held:?}");
        drop(outbox);

        let reopened = Outbox::open(&dir.path().join("outbox")).unwrap();
        let json = |entries: Vec<Entry>| {
            let mut texts: Vec<String> = entries
                .iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect();
            texts.sort();
            texts
        };
        assert_eq!(
            json(reopened.entries()),
            json(vec![odd.clone(), one.clone()])
        );
        reopened.remove(&one).await;
        assert_eq!(json(reopened.entries()), json(vec![odd.clone()]));
        let again = Outbox::open(&dir.path().join("outbox")).unwrap();
        assert_eq!(json(again.entries()), json(vec![odd]));
    }
}
