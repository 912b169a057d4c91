//! Configuration strings: `key=value` pairs separated by commas or whitespace.
//!
//! `GYOZA_STRATEGY_CONFIG="backfill=true, max_scan=500"` reaches [`Strategy::init`](crate::Strategy::init)
//! as is; strategies that want pairs parse it with [`parse`].

/// The pairs of `config`, in order; an entry without `=` is an error naming it.
pub fn parse(config: &str) -> Result<Vec<(&str, &str)>, String> {
    config
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("config entry '{entry}' is not key=value"))
        })
        .collect()
}

/// A boolean value (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`).
pub fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "config '{key}' must be true or false, got '{value}'"
        )),
    }
}
