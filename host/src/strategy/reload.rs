//! Hot reload: the plugins directory is looked at about once a second; a new or changed file
//! is compiled, validated (world, WIT version, `init`) and swapped in; a bad file is logged,
//! listed as rejected, and ignored; a removed file unloads its strategy (never the active
//! one) or brings back the built-in it overrode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use gyoza_core::sync::lock;
use gyoza_wasm::{Limits, Runtime};

use super::builtin::builtin;
use super::error::StrategyError;
use super::plugin::{Plugin, plugin_name};
use super::registry::Registry;

/// How often the plugins directory is looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What the watcher knows of a plugin file: its size and modification time when last read.
type FileStamp = (u64, Option<SystemTime>);

/// Keeps a registry in step with a plugins directory.
pub(super) struct Reload {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    config: String,
    limits: Limits,
    registry: Arc<Registry>,
    files: Mutex<HashMap<PathBuf, FileStamp>>,
}

impl Reload {
    /// Watches `dir` for `registry`; plugins are loaded with `config` under `limits`.
    pub fn new(
        dir: PathBuf,
        runtime: Arc<Runtime>,
        config: String,
        limits: Limits,
        registry: Arc<Registry>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dir,
            runtime,
            config,
            limits,
            registry,
            files: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the thread that rescans every [`RELOAD_INTERVAL`]. It holds only a weak
    /// reference: it stops once the host (the owner of `self`) is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<(), StrategyError> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let dir = self.dir.clone();
        std::thread::Builder::new()
            .name("gyoza-plugins".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RELOAD_INTERVAL);
                    let Some(reload) = weak.upgrade() else { break };
                    reload.rescan();
                }
                tracing::debug!(dir = %dir.display(), "plugin watcher stopped");
            })
            .map(drop)
            .map_err(|cause| StrategyError::Io {
                context: "cannot start the plugin watcher".into(),
                cause,
            })
    }

    /// Looks at the directory once: loads new and changed files, unloads removed ones.
    pub fn rescan(&self) {
        let Some(present) = self.list() else { return };
        let changed: Vec<(PathBuf, FileStamp)> = {
            let files = lock(&self.files);
            present
                .iter()
                .filter(|(path, stamp)| files.get(*path) != Some(stamp))
                .map(|(p, s)| (p.clone(), *s))
                .collect()
        };
        for (path, stamp) in changed {
            self.load_file(&path);
            lock(&self.files).insert(path, stamp);
        }
        let removed: Vec<PathBuf> = lock(&self.files)
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        for path in removed {
            lock(&self.files).remove(&path);
            self.unload_file(&path);
        }
    }

    /// The `.wasm` files of the directory with their stamps; `None` if it cannot be read
    /// (a missing directory is created for next time).
    fn list(&self) -> Option<HashMap<PathBuf, FileStamp>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Err(e) = std::fs::create_dir_all(&self.dir) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot create the plugins directory");
                }
                return None;
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the plugins directory");
                return None;
            }
        };
        let mut present = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                present.insert(path, (meta.len(), meta.modified().ok()));
            }
        }
        Some(present)
    }

    fn load_file(&self, path: &Path) {
        let name = plugin_name(path);
        let label = file_label(path);
        let result = std::fs::read(path)
            .map_err(|cause| StrategyError::Io {
                context: format!("cannot read {}", path.display()),
                cause,
            })
            .and_then(|bytes| {
                let current = self.registry.get(&name).map(|p| p.sha256.clone());
                if current.as_deref() == Some(gyoza_wasm::sha256_hex(&bytes).as_str()) {
                    return Ok(None);
                }
                let origin = path.display().to_string();
                Plugin::load_bytes(
                    &self.runtime,
                    &name,
                    origin,
                    &bytes,
                    &self.config,
                    self.limits,
                )
                .map(Some)
            });
        match result {
            Ok(Some(plugin)) => {
                tracing::info!(strategy = %name, sha256 = %plugin.sha256, file = %path.display(), "plugin loaded");
                // The swap: claims that already hold the old Arc finish on it.
                self.registry.insert(plugin);
                self.registry.clear_rejection(&label);
            }
            Ok(None) => self.registry.clear_rejection(&label),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "plugin refused; the loaded strategies keep working");
                self.registry.reject(label, e.to_string());
            }
        }
    }

    fn unload_file(&self, path: &Path) {
        let name = plugin_name(path);
        self.registry.clear_rejection(&file_label(path));
        if self.registry.active_name() == name {
            tracing::warn!(strategy = %name, "the active strategy's file was removed; it stays loaded until another is activated");
            return;
        }
        let from_file = self
            .registry
            .get(&name)
            .is_some_and(|p| p.origin != "builtin");
        if !from_file {
            return;
        }
        match builtin(&name) {
            // A removed override of a built-in brings the built-in back.
            Some(builtin) => match Plugin::load_bytes(
                &self.runtime,
                &name,
                "builtin".into(),
                builtin.wasm,
                &self.config,
                self.limits,
            ) {
                Ok(plugin) => self.registry.insert(plugin),
                Err(e) => tracing::error!(error = %e, "cannot reload a built-in strategy"),
            },
            None => self.registry.remove(&name),
        }
        tracing::info!(strategy = %name, file = %path.display(), "plugin file removed; strategy unloaded");
    }
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
