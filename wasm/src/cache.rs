//! Compile-with-cache: precompiled components on disk, keyed by the wasm's sha256 and the
//! engine's compatibility hash (wasmtime version, target, settings), written atomically.

use std::hash::{Hash, Hasher};
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiles `bytes` (whose sha256 is `sha256`) for `engine`, loading the artifact from `dir`
/// when an earlier compile left it there, and leaving it there otherwise.
pub(crate) fn compile(
    engine: &Engine,
    dir: &Path,
    bytes: &[u8],
    sha256: &str,
) -> Result<Component, String> {
    let path = dir.join(format!("{sha256}-{:016x}.cwasm", compatibility(engine)));
    if path.exists() {
        // SAFETY: the cache directory is written only by this program (below; the runtime's
        // options say so to its users), and the file name carries both the wasm's hash and
        // the engine's compatibility hash; wasmtime also checks the artifact's header against
        // this engine. Whoever can write there can already replace the program's binary.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unusable cached wasm artifact; recompiling");
            }
        }
    }
    let compiled = engine
        .precompile_component(bytes)
        .map_err(|e| format!("{e:#}"))?;
    if let Err(e) = write_atomically(&path, &compiled) {
        tracing::warn!(file = %path.display(), error = %e, "cannot cache the compiled wasm");
    }
    // SAFETY: `compiled` was produced just now by this very engine.
    unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| format!("{e:#}"))
}

/// Hex sha256 of `bytes`: the identity of a guest (and the key of its cached artifact).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A short hash of everything that makes a compiled artifact usable by `engine`.
fn compatibility(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Writes through a temporary file and a rename, so that a crash never leaves half an artifact
/// under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process and per write: two programs compiling the same guest at once must
    // not share a temporary file (interleaved writes would make a corrupt artifact).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
