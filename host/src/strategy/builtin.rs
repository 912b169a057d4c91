//! The built-in strategies, built from `plugins/` by `host/build.rs` and embedded in the
//! binary, by name.

/// One embedded strategy.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name it is listed and activated by.
    pub name: &'static str,
    /// Its component.
    pub wasm: &'static [u8],
}

const DIRECT: Builtin = Builtin {
    name: "direct",
    wasm: include_bytes!(concat!(
        env!("GYOZA_PLUGINS_OUT"),
        "/gyoza_strategy_direct.wasm"
    )),
};

const PRIORITY: Builtin = Builtin {
    name: "priority",
    wasm: include_bytes!(concat!(
        env!("GYOZA_PLUGINS_OUT"),
        "/gyoza_strategy_priority.wasm"
    )),
};

const BIN_PACKING: Builtin = Builtin {
    name: "bin-packing",
    wasm: include_bytes!(concat!(
        env!("GYOZA_PLUGINS_OUT"),
        "/gyoza_strategy_bin_packing.wasm"
    )),
};

const FAIR_SHARE: Builtin = Builtin {
    name: "fair-share",
    wasm: include_bytes!(concat!(
        env!("GYOZA_PLUGINS_OUT"),
        "/gyoza_strategy_fair_share.wasm"
    )),
};

const AFFINITY: Builtin = Builtin {
    name: "affinity",
    wasm: include_bytes!(concat!(
        env!("GYOZA_PLUGINS_OUT"),
        "/gyoza_strategy_affinity.wasm"
    )),
};

/// Every built-in strategy.
pub const BUILTINS: [Builtin; 5] = [DIRECT, PRIORITY, BIN_PACKING, FAIR_SHARE, AFFINITY];

/// The strategy that decides when a plugin fails and the policy is `fallback`.
pub(super) const FALLBACK_BUILTIN: Builtin = PRIORITY;

/// Name of the strategy used when a plugin fails and the policy is `fallback`.
pub const FALLBACK: &str = FALLBACK_BUILTIN.name;

/// The built-in strategy called `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|builtin| builtin.name == name)
}
