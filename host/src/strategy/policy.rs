//! The fail policy: what a claim gets when the active strategy traps, times out or returns an
//! error. The type is the wire's ([`gyoza_core::api::FailPolicy`]); this module adds how the
//! command line reads it.

use clap::builder::{PossibleValuesParser, TypedValueParser};

pub use gyoza_core::api::FailPolicy;

/// The `--strategy-fail-policy` parser: one of [`FailPolicy::NAMES`], listed in `--help`.
pub fn fail_policy_parser() -> impl TypedValueParser<Value = FailPolicy> {
    PossibleValuesParser::new(FailPolicy::NAMES).try_map(|name| name.parse::<FailPolicy>())
}
