//! gyoza-plugin-sdk: write a gyoza scheduling strategy in plain Rust.
//!
//! A strategy is a type implementing [`Strategy`], exported with [`export_strategy!`] from a
//! `cdylib` crate built for `wasm32-wasip2`, and unit-tested natively with the test kit
//! ([`testing`]):
//!
//! ```
//! use gyoza_plugin_sdk::{Claim, Decision, Strategy, WaitCode, export_strategy, reason};
//!
//! /// Best first (the order of `claim.pending`), passing over runs that do not fit.
//! struct Greedy;
//!
//! impl Strategy for Greedy {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Greedy)
//!     }
//!
//!     fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
//!         let mut free = claim.requester_capacity();
//!         let mut decision = Decision::default();
//!         for (index, run) in claim.pending.iter().enumerate() {
//!             if decision.assign.len() >= claim.max as usize {
//!                 break;
//!             }
//!             match free.fit(&run) {
//!                 Some(gpu) => {
//!                     free.take(&run, gpu);
//!                     decision.assign.push(index as u32);
//!                 }
//!                 None => {
//!                     let why = reason::does_not_fit(&run, &free).unwrap_or_default();
//!                     decision.wait(index, WaitCode::Capacity, why);
//!                 }
//!             }
//!         }
//!         Ok(decision)
//!     }
//! }
//!
//! export_strategy!(Greedy);
//!
//! # fn main() {
//! // In `#[cfg(test)] mod tests`, natively:
//! use gyoza_plugin_sdk::testing::{ClaimBuilder, RunSpec, RunningSpec, WorkerSpec, decide};
//!
//! let claim = ClaimBuilder::new()
//!     .worker(WorkerSpec::new(8, 16384).gpu(0, 8192, []))
//!     .running(RunningSpec::on(0).cpu(6))
//!     .pending(RunSpec::new().priority(5).cpu(4))
//!     .pending(RunSpec::new().priority(1).cpu(1).vram_mb(4096))
//!     .build();
//! let decision = decide::<Greedy>("", &claim).unwrap();
//! assert_eq!(decision.assign, [1]);
//! assert_eq!(decision.deferred[0].reason, "needs 4 CPU cores; 2 free");
//! # }
//! ```
//!
//! The host creates one instance, calls [`Strategy::init`] once with the operator's
//! configuration string ([`config`] parses `key=value` pairs), then [`Strategy::schedule`]
//! once per claim, so `&mut self` may keep state across claims. Each call runs under a
//! deadline and a memory limit; a panic is a trap, which the host contains and answers with
//! its fail policy.
//!
//! # The claim
//!
//! A [`Claim`] (`gyoza:scheduler@1.0.0`) is what the worker asking for work (the
//! *requester*, `claim.requester`, an index into `claim.workers`) may take, and everything
//! around it:
//! - [`PendingRuns`] (`claim.pending`): the runs it may take, best first (priority, then
//!   age); the host has already left out those whose required tags it does not meet.
//! - [`Workers`] and [`Gpus`]: every active worker, the requester included, with its free
//!   CPU, RAM and per-GPU VRAM after the runs it holds; worker `i`'s GPUs are a range of
//!   `claim.gpus` ([`Claim::gpu_range`]).
//! - [`RunningRuns`] (`claim.running`): every run those workers hold, with its priority,
//!   what it holds, how long it has run and whether it may be preempted
//!   ([`Claim::running_on`] lists a worker's).
//! - [`Queues`]: every queue with pending or running runs or a configuration: its weight,
//!   quotas ([`NO_QUOTA`] when none), what its runs hold, how many wait, and usage decayed
//!   with a half-life of `claim.usage_half_life_s`.
//!
//! Each is columns: one `Vec` per field, entry `i` of each being row `i`. That is what makes
//! a claim cheap to hand to a component. Read them a row at a time ([`PendingRuns::run`],
//! [`PendingRuns::iter`], [`Workers::worker`], [`RunningRuns::run`], [`Queues::queue`]) or,
//! in a hot loop, a column at a time (`claim.pending.cpu[i]`).
//!
//! Strings (queues, definitions, images, tags, label keys and values) are indices into one
//! table, `claim.strings`, whose entry 0 is "" (a run without a definition names 0):
//! [`Claim::string`] resolves one. A row's tags and labels are a range of the flat lists
//! `claim.tags` and `claim.labels`: [`Claim::run_tags`], [`Claim::worker_tags`],
//! [`Claim::gpu_tags`], [`Claim::run_label`], [`Claim::running_label`] and
//! [`Claim::queue_name`] read them as `&str`. Before a strategy sees a claim, the export
//! checks that every column has its length and every index and range stays within its list
//! ([`Claim::malformed`]); the host never sends one that does not, and the helpers never
//! panic on one that does.
//!
//! # The answer
//!
//! A [`Decision`] has three lists:
//! - `assign`: indices into `claim.pending` of the runs the requester takes, best first. The
//!   host drops unknown, duplicate and over-capacity ones and counts them.
//! - `deferred`: why some runs wait ([`Decision::wait`] with a [`WaitCode`], or
//!   [`Decision::defer`], whose code is [`WaitCode::Other`]), shown to users as the run's
//!   `scheduling.reason`. Give reasons for the first few runs only: the host keeps a handful.
//! - `evict`: running runs to preempt for a pending run ([`Decision::evict`]). The host
//!   carries out an eviction only if the run is preemptible and held by the requester, and is
//!   evicted for a pending run of a strictly higher priority that is in `assign` or
//!   `deferred`; it refuses (and counts) the others, and caps how many it carries out per
//!   claim and per minute (the server's configuration, which the claim does not show). What
//!   the evictions free counts for the same decision's assignments ([`Claim::free_up`] adds
//!   it back to a [`Capacity`]).
//!
//! # Testing
//!
//! [`testing`] builds claims natively, as the host does ([`testing::ClaimBuilder`]), runs a
//! strategy on one as the export does ([`testing::decide`]) and applies the host's rules to
//! the answer ([`testing::outcome`]). It compiles on every target and only builds records, so
//! `cargo test` on the author's machine needs neither a server nor a wasm runtime.
//!
//! # Layout
//! - [`Strategy`], [`export_strategy!`]: what an author implements and how it is exported.
//! - The WIT types ([`Claim`] and its columns [`PendingRuns`], [`Workers`], [`Gpus`],
//!   [`RunningRuns`], [`Labels`], [`Queues`]; [`Decision`], [`Deferral`], [`WaitCode`],
//!   [`Eviction`]) re-exported from the private bindings.
//! - `model` (private): rows ([`PendingRun`], [`Worker`], [`Gpu`], [`RunningRun`],
//!   [`Queue`]) and helpers on the WIT types; [`Capacity`]: free CPU/RAM/VRAM of one worker,
//!   with `fit` / `take` for simulations; [`reason`]: the wording of "why this run did not
//!   fit" messages. Plain Rust over the WIT records, so that the host's benchmark can compile
//!   the very same code natively.
//! - [`testing`]: the native test kit.
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

    /// Decides one claim: which of `claim.pending` the requester takes, why some others
    /// wait, and which running runs to preempt for them. An error fails this call (the host
    /// applies its fail policy).
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
