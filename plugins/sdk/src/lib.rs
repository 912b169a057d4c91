//! gyoza-plugin-sdk: write a gyoza scheduling strategy in plain Rust.
//!
//! A strategy is a type implementing [`Strategy`], exported with [`export_strategy!`] from a
//! `cdylib` crate built for `wasm32-wasip2`:
//!
//! ```ignore
//! use gyoza_plugin_sdk::{Claim, Decision, Strategy, export_strategy};
//!
//! struct Oldest;
//!
//! impl Strategy for Oldest {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Oldest)
//!     }
//!     fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
//!         let mut free = claim.requester_capacity();
//!         let mut decision = Decision::default();
//!         for (index, run) in claim.pending.iter().enumerate() {
//!             if let Some(gpu) = free.fit(&run) {
//!                 free.take(&run, gpu);
//!                 decision.assign.push(index as u32);
//!             }
//!         }
//!         Ok(decision)
//!     }
//! }
//!
//! export_strategy!(Oldest);
//! ```
//!
//! The host creates one instance, calls [`Strategy::init`] once with the operator's
//! configuration string, then [`Strategy::schedule`] once per claim, so `&mut self` may keep
//! state across claims. Each call runs under a deadline and a memory limit; a panic is a trap,
//! which the host contains and answers with its fail policy.
//!
//! The claim's runs, workers and GPUs are columns (`gyoza:scheduler@0.2.0`): read them
//! row by row ([`PendingRuns::iter`], [`PendingRuns::run`], [`Workers::worker`], ...) or, in
//! a hot loop, a column at a time (`claim.pending.cpu[i]`).
//!
//! # Layout
//! - [`Strategy`], [`export_strategy!`]: what an author implements and how it is exported.
//! - The WIT types ([`Claim`] and its columns [`PendingRuns`], [`Workers`], [`Gpus`];
//!   [`Decision`], [`Deferral`]) re-exported from the private bindings.
//! - `model` (private): rows ([`PendingRun`], [`Worker`], [`Gpu`]) and helpers on the WIT
//!   types; [`Capacity`]: free CPU/RAM/VRAM of one worker, with `fit` / `take` for
//!   simulations; [`reason`]: the wording of "why this run did not fit" messages. Plain Rust
//!   over the WIT records, so that the host's benchmark can compile the very same code
//!   natively.
//! - [`config`]: a `key=value,key=value` parser for configuration strings.
//! - [`step`]: worker pipeline steps (`gyoza:pipeline@0.1.0`): [`step::Step`] and
//!   [`export_step!`].

#[doc(hidden)]
pub mod bindings {
    //! Generated glue; authors never name it (the export macro does).
    wit_bindgen::generate!({
        path: "../../wit/scheduler@1.0.0",
        world: "gyoza:scheduler/strategy@1.0.0",
        default_bindings_module: "gyoza_plugin_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_strategy_world",
        // So that tests compare decisions and claims with `assert_eq!`.
        additional_derives: [PartialEq],
    });
}

pub mod config;
mod model;
pub mod step;
pub mod testing;

pub use model::{
    Capacity, Gpu, NO_GPU, NO_QUOTA, PendingRun, Placement, Queue, RunningRun, Worker, reason,
};

pub use bindings::gyoza::scheduler::types::{
    Claim, Decision, Deferral, Eviction, Gpus, Labels, PendingRuns, Queues, RunningRuns, WaitCode,
    Workers,
};

/// The WIT package version this SDK implements.
pub const WIT_VERSION: &str = "1.0.0";

/// A scheduling strategy.
pub trait Strategy: Sized + 'static {
    /// Builds the strategy from the operator's configuration string (often empty). An error
    /// refuses the plugin with that message.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides one claim: which of `claim.pending` the requester takes, and why some others
    /// wait. An error fails this call (the host applies its fail policy).
    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String>;
}

#[doc(hidden)]
pub mod __private {
    //! What [`export_strategy!`](crate::export_strategy) expands to; not part of the API.
    pub use crate::bindings::exports::gyoza::scheduler::scheduling::Guest;
}

/// Exports `$strategy` (a type implementing [`Strategy`]) as the component's `scheduling`
/// interface. Use it once, at the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        const _: () = {
            // One instance serves every claim: the strategy lives here between calls.
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::std::option::Option<$strategy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl $crate::__private::Guest for Export {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let strategy = <$strategy as $crate::Strategy>::init(&config)?;
                    STATE.with(|state| *state.borrow_mut() = ::std::option::Option::Some(strategy));
                    ::std::result::Result::Ok(())
                }

                fn schedule(
                    claim: $crate::Claim,
                ) -> ::std::result::Result<$crate::Decision, ::std::string::String> {
                    if let ::std::option::Option::Some(why) = claim.malformed() {
                        return ::std::result::Result::Err(why.into());
                    }
                    STATE.with(|state| match state.borrow_mut().as_mut() {
                        ::std::option::Option::Some(strategy) => {
                            <$strategy as $crate::Strategy>::schedule(strategy, &claim)
                        }
                        ::std::option::Option::None => {
                            ::std::result::Result::Err("schedule called before init".into())
                        }
                    })
                }
            }

    $crate::bindings::__export_strategy_world!(Export with_types_in $crate::bindings);
        };
    };
}
