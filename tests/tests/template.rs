//! The strategy template as its users build it: a copy of `examples/strategy-template` built
//! with `cargo component build --release` (cargo-component's default: wasm32-wasip1 behind the
//! preview1 adapter) and with plain `cargo build --release --target wasm32-wasip2`. Both
//! outputs are dropped into a running server's plugins directory, both load, and each, once
//! active, decides a real claim.
//!
//! cargo-component is required: `scripts/setup.d/15-cargo-component.sh` installs the pinned
//! version. The builds go to `<target>/template-builds`, so that reruns are incremental.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gyoza_core::api::{HeartbeatRequest, OpRunCreate, StrategyInfo, StrategyList};
use gyoza_core::client::Client;
use gyoza_e2e::{Server, workspace_root};
use serde_json::json;

/// The plugin names (file stems) the two builds are dropped in under.
const COMPONENT: &str = "tmpl_component";
const CARGO: &str = "tmpl_cargo";

/// Variables of the outer build that are for native code, not for the guest (as in
/// host/build.rs), and those `cargo test` sets for the running test binary.
fn clean_env(command: &mut Command) {
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
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        ) || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            command.env_remove(name);
        }
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    clean_env(&mut command);
    command
}

/// Fails (never skips) when cargo-component is missing: CI installs it.
fn require_cargo_component() {
    let output = cargo().args(["component", "--version"]).output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "cargo-component is not installed: run scripts/setup.d/15-cargo-component.sh, \
             which installs the pinned version (`cargo component --version`: {})",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run cargo ({e}); scripts/setup.d/15-cargo-component.sh installs \
             cargo-component"
        ),
    }
}

/// The template's sources, manifest and lock file, copied to `dir`, with the SDK's relative
/// path made absolute.
fn copy_template(dir: &Path) {
    let template = workspace_root().join("examples/strategy-template");
    copy_dir(&template, dir);
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read the template's Cargo.toml");
    let relative = r#"path = "../../plugins/sdk""#;
    assert!(
        text.contains(relative),
        "the template's Cargo.toml no longer has `{relative}`:\n{text}"
    );
    let sdk = workspace_root().join("plugins/sdk");
    let absolute = format!("path = {:?}", sdk.display().to_string());
    std::fs::write(&manifest, text.replace(relative, &absolute)).expect("write Cargo.toml");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read the template") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        if entry.file_name() == "target" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy a template file");
        }
    }
}

/// Whether the toolchain has the standard library for `triple`.
fn target_installed(triple: &str) -> bool {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(triple)
        .is_dir()
}

/// `<CARGO_TARGET_DIR or the workspace's target>/template-builds`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("template-builds")
}

/// Runs a build of the copy in `dir` (`args` after `cargo`) and returns `output`, which it
/// must have produced.
fn build(dir: &Path, args: &[&str], output: PathBuf) -> PathBuf {
    let _ = std::fs::remove_file(&output);
    let mut command = cargo();
    command
        .args(args)
        .args(["--release", "--locked", "--quiet"])
        .arg("--target-dir")
        .arg(target_dir())
        .current_dir(dir);
    let started = Instant::now();
    let result = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo {args:?}: {e}"));
    assert!(
        result.status.success(),
        "cargo {args:?} failed ({}):\n{}{}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        output.is_file(),
        "cargo {args:?} succeeded but did not produce {}",
        output.display()
    );
    eprintln!(
        "cargo {args:?}: {} in {:.1?}",
        output.display(),
        started.elapsed()
    );
    output
}

fn find<'a>(list: &'a StrategyList, name: &str) -> Option<&'a StrategyInfo> {
    list.strategies.iter().find(|s| s.name == name)
}

async fn strategy(client: &Client, name: &str) -> StrategyInfo {
    let list = client.strategies().await.expect("GET /strategies");
    find(&list, name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is no longer listed: {list:?}"))
}

/// Polls `GET /strategies` until every one of `names` is listed, failing at once when one of
/// their files is rejected.
async fn wait_until_loaded(client: &Client, names: &[&str]) -> StrategyList {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = client.strategies().await.expect("GET /strategies");
        for rejected in &list.rejected {
            assert!(
                !names.iter().any(|n| rejected.file == format!("{n}.wasm")),
                "the server rejected {}: {}",
                rejected.file,
                rejected.error
            );
        }
        if names.iter().all(|n| find(&list, n).is_some()) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{names:?} not loaded within 60 s: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn heartbeat(client: &Client, worker: &str) {
    let beat: HeartbeatRequest = serde_json::from_value(json!({
        "worker_id": worker,
        "resources": {"cpu_cores": 8, "ram_mb": 16384, "gpus": []}
    }))
    .expect("heartbeat");
    client.heartbeat(&beat).await.expect("heartbeat");
}

/// Activates `name`, then shows that it decides a claim: a worker with room for the new run
/// gets it, and the strategy's call count grows without failures.
async fn decides_a_claim(client: &Client, name: &str, worker: &str) {
    let list = client.activate_strategy(name).await.expect("activate");
    assert_eq!(list.active, name, "{list:?}");
    let before = strategy(client, name).await;
    heartbeat(client, worker).await;
    let run: OpRunCreate = serde_json::from_value(json!({
        "image": "gyoza-example/echo:latest", "priority": 5,
        "constraints": {"cpu": 1, "ram_mb": 256}
    }))
    .expect("run");
    let run = client.create_run(&run).await.expect("create run");
    let claimed = client.claim(worker, 1).await.expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|op| op.id.as_str()).collect();
    assert_eq!(ids, [run.id.as_str()], "{name} did not give the run out");
    let after = strategy(client, name).await;
    assert!(
        after.calls > before.calls,
        "{name} was not called: {before:?} then {after:?}"
    );
    assert_eq!(
        after.failures, before.failures,
        "{name} failed (the fail policy decided instead): {after:?}"
    );
    assert!(after.active, "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_template_built_with_cargo_component_and_with_cargo_loads_and_schedules() {
    require_cargo_component();
    let source = tempfile::tempdir().expect("temp dir");
    copy_template(source.path());
    let target = target_dir();
    let release = |triple: &str| target.join(triple).join("release/my_strategy.wasm");
    // cargo-component's default target is wasm32-wasip1 (behind its preview1 adapter).
    // Where that target cannot be installed (no rustup server), the same command builds for
    // wasm32-wasip2, which cargo-component then leaves as cargo made it.
    let component = if target_installed("wasm32-wasip1") {
        build(
            source.path(),
            &["component", "build"],
            release("wasm32-wasip1"),
        )
    } else {
        eprintln!("wasm32-wasip1 is not installed: cargo component builds for wasm32-wasip2");
        build(
            source.path(),
            &["component", "build", "--target", "wasm32-wasip2"],
            release("wasm32-wasip2"),
        )
    };
    let plain = build(
        source.path(),
        &["build", "--target", "wasm32-wasip2"],
        release("wasm32-wasip2"),
    );

    let plugins = tempfile::tempdir().expect("temp dir");
    let dir = plugins.path().display().to_string();
    let server = Server::start_with(&["--plugins-dir", &dir]);
    let client = server.client();
    for (file, name) in [(&component, COMPONENT), (&plain, CARGO)] {
        std::fs::copy(file, plugins.path().join(format!("{name}.wasm"))).expect("drop the plugin");
    }
    let list = wait_until_loaded(&client, &[COMPONENT, CARGO]).await;
    let versions: Vec<&str> = [COMPONENT, CARGO]
        .iter()
        .filter_map(|n| find(&list, n))
        .map(|s| s.wit_version.as_str())
        .collect();
    assert!(!versions[0].is_empty(), "{list:?}");
    assert_eq!(versions[0], versions[1], "{list:?}");

    for name in [COMPONENT, CARGO] {
        decides_a_claim(&client, name, "template-worker").await;
    }
}
