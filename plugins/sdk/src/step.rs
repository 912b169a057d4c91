//! Worker pipeline steps (`gyoza:pipeline@0.1.0`, world `step`).
//!
//! A step is a type implementing [`Step`], exported with
//! [`export_step!`](crate::export_step) from a `cdylib` built for `wasm32-wasip2`:
//!
//! ```ignore
//! use gyoza_plugin_sdk::step::{ExecutionContext, Step};
//!
//! struct Hello;
//!
//! impl Step for Hello {
//!     fn run(mut context: ExecutionContext, _config: &str) -> Result<ExecutionContext, String> {
//!         context.env_vars.push(("HELLO".into(), "world".into()));
//!         Ok(context)
//!     }
//! }
//!
//! gyoza_plugin_sdk::export_step!(Hello);
//! ```
//!
//! The worker calls [`Step::run`] once per run, on a fresh instance, with the step's
//! configuration (its `[step.config]` table) as JSON text.

#[doc(hidden)]
pub mod bindings {
    //! Generated glue; authors never name it (the export macro does).
    wit_bindgen::generate!({
        path: "../../wit/pipeline@0.1.0",
        world: "gyoza:pipeline/step@0.1.0",
        default_bindings_module: "gyoza_plugin_sdk::step::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_step_world",
    });
}

pub use bindings::gyoza::pipeline::types::{Constraints, ExecutionContext};

/// The WIT package version steps implement.
pub const WIT_VERSION: &str = "0.1.0";

/// A pipeline step.
pub trait Step: 'static {
    /// Changes `context` (or not); an error fails the run with this message. `config` is
    /// the step's configuration from the pipeline file, as the text of a JSON object.
    fn run(context: ExecutionContext, config: &str) -> Result<ExecutionContext, String>;
}

#[doc(hidden)]
pub mod __private {
    //! What [`export_step!`](crate::export_step) expands to; not part of the API.
    pub use super::bindings::exports::gyoza::pipeline::step_api::Guest;
}

/// Exports `$step` (a type implementing [`step::Step`](crate::step::Step)) as the component's
/// `step-api` interface. Use it once, at the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        const _: () = {
            struct Export;

            impl $crate::step::__private::Guest for Export {
                fn run(
                    context: $crate::step::ExecutionContext,
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::step::ExecutionContext, ::std::string::String>
                {
                    <$step as $crate::step::Step>::run(context, &config)
                }
            }

            $crate::step::bindings::__export_step_world!(Export with_types_in $crate::step::bindings);
        };
    };
}
