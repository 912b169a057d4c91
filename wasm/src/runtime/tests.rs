//! Each class of a failed call, from tiny core modules written as bytes (`wat` is not a
//! dependency): a loop that never ends, a memory that grows past the limit, an unreachable.

use std::time::{Duration, Instant};

use wasmtime::{Instance, Module};

use super::*;
use crate::failure::{Failure, outcome};

/// A core module exporting `run: () -> ()` with `body` (locals and code, ending in `end`) and,
/// if `memory`, one memory of one page.
fn module(body: &[u8], memory: bool) -> Vec<u8> {
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend([1, 4, 1, 0x60, 0, 0]); // type section: () -> ()
    wasm.extend([3, 2, 1, 0]); // function section: one function of type 0
    if memory {
        wasm.extend([5, 3, 1, 0, 1]); // memory section: min 1 page, no maximum
    }
    wasm.extend([7, 7, 1, 3, b'r', b'u', b'n', 0, 0]); // export "run" = function 0
    let size = u8::try_from(body.len()).expect("a tiny body");
    wasm.extend([10, size + 2, 1, size]); // code section: one body
    wasm.extend(body);
    wasm
}

fn run(runtime: &Runtime, wasm: &[u8], limits: Limits) -> Result<(), Failure> {
    let module = Module::new(runtime.engine(), wasm).expect("a valid module");
    let mut store = runtime.store(limits);
    let instance = Instance::new(&mut store, &module, &[]).map_err(|e| Failure::of(&e))?;
    let run = instance
        .get_typed_func::<(), ()>(&mut store, "run")
        .expect("exports run");
    outcome(run.call(&mut store, ()).map(Ok))
}

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(20),
        memory: 1 << 20,
    }
}

fn runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeOptions::default()).expect("an engine")
}

#[test]
fn an_endless_loop_is_a_timeout() {
    // loop; br 0; end; end
    let wasm = module(&[0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b], false);
    let started = Instant::now();
    assert_eq!(run(&runtime(), &wasm, limits()), Err(Failure::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn growing_memory_past_the_limit_is_memory() {
    // i32.const 1000 (pages: 64 MiB); memory.grow 0; drop; end
    let wasm = module(&[0, 0x41, 0xe8, 0x07, 0x40, 0, 0x1a, 0x0b], true);
    assert_eq!(run(&runtime(), &wasm, limits()), Err(Failure::Memory));
    // Within the limit the same growth succeeds.
    let roomy = Limits {
        memory: 128 << 20,
        ..limits()
    };
    assert_eq!(run(&runtime(), &wasm, roomy), Ok(()));
}

#[test]
fn unreachable_is_a_trap() {
    let wasm = module(&[0, 0x00, 0x0b], false);
    match run(&runtime(), &wasm, limits()) {
        Err(Failure::Trap(text)) => assert!(!text.is_empty()),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn an_error_value_is_the_guests() {
    let answer: wasmtime::Result<Result<(), String>> = Ok(Err("no such config key".into()));
    assert_eq!(
        outcome(answer),
        Err(Failure::Guest("no such config key".into()))
    );
}

#[test]
fn the_ticker_lets_the_engine_go() {
    let runtime = runtime();
    let weak = runtime.engine().weak();
    drop(runtime);
    // The ticker upgrades its weak reference for an instant each tick; wait that out.
    let started = Instant::now();
    while weak.upgrade().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the ticker keeps the engine alive"
        );
        std::thread::sleep(TICK);
    }
}

#[test]
fn a_compiled_component_is_cached_once_and_junk_never() {
    // The smallest component: the preamble of an empty one.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = RuntimeOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        perf_map: false,
    };
    let artifacts = || std::fs::read_dir(dir.path()).expect("the cache").count();
    let runtime = Runtime::new(options.clone()).expect("an engine");
    assert!(matches!(
        runtime.compile(b"not wasm"),
        Err(WasmError::Compile(_))
    ));
    assert_eq!(artifacts(), 0);
    let first = runtime.compile(EMPTY).expect("an empty component compiles");
    assert_eq!(first.sha256, sha256_hex(EMPTY));
    assert_eq!(artifacts(), 1);
    let again = Runtime::new(options).expect("an engine");
    again.compile(EMPTY).expect("loaded from the cache");
    assert_eq!(artifacts(), 1);
    assert!(runtime.exports(&first).is_empty());
}
