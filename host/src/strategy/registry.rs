//! The loaded plugins by name, which one is active, and the plugin files that were refused.
//! A claim takes an `Arc` of the plugin it starts with, so swapping one in never disturbs a
//! call in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use gyoza_core::api::{RejectedPlugin, StrategyInfo};
use gyoza_core::sync::{lock, read, write};

use super::error::StrategyError;
use super::plugin::Plugin;
use super::stats::Stats;

/// The loaded plugins and the active one's name.
pub(super) struct Registry {
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    active: RwLock<String>,
    /// Refused files (by file name) and why.
    rejected: Mutex<BTreeMap<String, String>>,
}

impl Registry {
    /// `plugins`, with `active` active (checked by [`Registry::check_active`]).
    pub fn new(plugins: impl IntoIterator<Item = Plugin>, active: &str) -> Self {
        let plugins = plugins
            .into_iter()
            .map(|plugin| (plugin.name.clone(), Arc::new(plugin)))
            .collect();
        Self {
            plugins: RwLock::new(plugins),
            active: RwLock::new(active.to_owned()),
            rejected: Mutex::new(BTreeMap::new()),
        }
    }

    /// The names of the loaded plugins.
    pub fn names(&self) -> Vec<String> {
        read(&self.plugins).keys().cloned().collect()
    }

    /// The active strategy's name.
    pub fn active_name(&self) -> String {
        read(&self.active).clone()
    }

    /// The active plugin, unless its name is no longer loaded.
    pub fn active(&self) -> Option<Arc<Plugin>> {
        let active = read(&self.active);
        read(&self.plugins).get(active.as_str()).cloned()
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        read(&self.plugins).get(name).cloned()
    }

    /// Whether `name` is loaded.
    pub fn contains(&self, name: &str) -> bool {
        read(&self.plugins).contains_key(name)
    }

    /// Fails unless the active name is loaded.
    pub fn check_active(&self) -> Result<(), StrategyError> {
        let active = self.active_name();
        if self.contains(&active) {
            return Ok(());
        }
        Err(StrategyError::Unknown {
            name: active,
            available: self.names(),
        })
    }

    /// Makes `name` the active strategy.
    pub fn activate(&self, name: &str) -> Result<(), StrategyError> {
        let plugins = read(&self.plugins);
        if !plugins.contains_key(name) {
            return Err(StrategyError::Unknown {
                name: name.to_owned(),
                available: plugins.keys().cloned().collect(),
            });
        }
        *write(&self.active) = name.to_owned();
        Ok(())
    }

    /// Loads `plugin` under its name, replacing any plugin of that name.
    pub fn insert(&self, plugin: Plugin) {
        write(&self.plugins).insert(plugin.name.clone(), Arc::new(plugin));
    }

    /// Unloads `name`.
    pub fn remove(&self, name: &str) {
        write(&self.plugins).remove(name);
    }

    /// Records that `file` was refused, and why.
    pub fn reject(&self, file: String, error: String) {
        lock(&self.rejected).insert(file, error);
    }

    /// Forgets that `file` was refused.
    pub fn clear_rejection(&self, file: &str) {
        lock(&self.rejected).remove(file);
    }

    /// Every loaded plugin as `GET /strategies` shows it.
    pub fn infos(&self, stats: &HashMap<String, Stats>) -> Vec<StrategyInfo> {
        let active = self.active_name();
        read(&self.plugins)
            .values()
            .map(|plugin| {
                let none = Stats::default();
                let stats = stats.get(&plugin.name).unwrap_or(&none);
                plugin.info(plugin.name == active, stats)
            })
            .collect()
    }

    /// The refused files.
    pub fn rejected(&self) -> Vec<RejectedPlugin> {
        lock(&self.rejected)
            .iter()
            .map(|(file, error)| RejectedPlugin {
                file: file.clone(),
                error: error.clone(),
            })
            .collect()
    }
}
