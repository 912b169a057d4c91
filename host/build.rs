//! Builds the wasm guests the server embeds and tests load: the workspace in `plugins/`
//! (built-in strategies and the bad-plugin fixtures) and `examples/strategy-template/`, for
//! `wasm32-wasip2`, into `<target>/wasm-plugins`. The host reads them through
//! `GYOZA_PLUGINS_OUT` and `GYOZA_TEMPLATE_OUT` (set for every target of this package).
//!
//! A nested cargo with its own target directory (so it never waits on the outer build's
//! lock) and a clean environment (the outer build's flags and clippy wrapper are for native
//! code, not for guests).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir
        .parent()
        .unwrap_or(Path::new(".."))
        .to_path_buf();
    let target_dir = match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("wasm-plugins");

    for watched in ["plugins", "wit", "examples/strategy-template"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    build(&root.join("plugins/Cargo.toml"), &target_dir);
    build(
        &root.join("examples/strategy-template/Cargo.toml"),
        &target_dir,
    );

    let out = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=GYOZA_PLUGINS_OUT={}", out.display());
    println!(
        "cargo:rustc-env=GYOZA_TEMPLATE_OUT={}",
        out.join("my_strategy.wasm").display()
    );
}

fn build(manifest: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        command.env_remove(var);
    }
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!(
                "error: building the wasm guests in {} failed ({status}).\n\
                 The server embeds strategies built for {TARGET}: install the target with \
                 `rustup target add {TARGET}` (scripts/setup.d/10-wasm.sh does).",
                manifest.display()
            );
            exit(1);
        }
        Err(e) => {
            eprintln!("error: cannot run cargo to build the wasm guests: {e}");
            exit(1);
        }
    }
}
