//! Reading what an op wrote to `outputs.json`, and checking it against its output specs.
//!
//! The run directory is the container's `/gyoza`: an op can put anything there, and the worker
//! reads it with the worker's rights. So the outputs file is opened without following a
//! symbolic link (a link to a host file would hand that file's content to whoever reads the
//! run), must be a regular file (a FIFO would block the worker, a device could be endless), and
//! is read up to a size limit (a huge file would take the worker down with every run on it).
//! Each refusal is a message for the op's author, and the run FAILS with it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use gyoza_core::definition::json_type_name;
use gyoza_core::{OutputSpec, ValueType};
use serde_json::{Map, Value};

/// The largest outputs file the worker reads by default (16 MiB; `--max-output-bytes`).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Opens `path` for reading without following a link at its last component, and only if it is
/// a regular file. `what` names the file in messages. `Ok(None)`: there is no such file.
pub fn open_regular(path: &Path, what: &str) -> Result<Option<(File, u64)>, String> {
    let opened = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "the op's {what} is a symbolic link; the worker does not follow links out of \
                 the run directory: write a regular file"
            ));
        }
        Err(e) => return Err(format!("cannot read the op's {what}: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the op's {what}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "the op's {what} is not a regular file (a directory, FIFO or device); write a \
             regular file"
        ));
    }
    Ok(Some((file, meta.len())))
}

/// Reads at most `max_bytes` of a regular file opened by [`open_regular`]; a longer file is
/// refused with a message that gives both sizes.
pub fn read_at_most(file: File, len: u64, max_bytes: u64, what: &str) -> Result<Vec<u8>, String> {
    let too_large = |size: u64| {
        format!(
            "the op's {what} is {size} bytes, more than the worker's limit of {max_bytes} \
             bytes (--max-output-bytes)"
        )
    };
    if len > max_bytes {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the op's {what}: {e}"))?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > max_bytes {
        return Err(too_large(read));
    }
    Ok(bytes)
}

/// The outputs file as the op wrote it (at most `max_bytes`), or a message for the op's author.
pub fn read_outputs(path: &Path, max_bytes: u64) -> Result<Map<String, Value>, String> {
    let what = "outputs file";
    let Some((file, len)) = open_regular(path, what)? else {
        return Err(format!(
            "the op exited 0 but wrote no outputs: expected a JSON object in \
             GYOZA_OUTPUT_PATH (/gyoza/{})",
            file_name(path)
        ));
    };
    let text = read_at_most(file, len, max_bytes, what)?;
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(outputs)) => Ok(outputs),
        Ok(other) => Err(format!(
            "the op's outputs file must hold a JSON object, but it holds {} {}",
            article(json_type_name(&other)),
            json_type_name(&other)
        )),
        Err(e) => Err(format!(
            "the op's outputs file is not valid JSON ({e}); it must hold a JSON object"
        )),
    }
}

/// Writes `bytes` to a NEW file `name` in `dir`: refuses to write through a link or over an
/// existing file (something left in a reused directory must not redirect the worker's write).
pub fn write_new_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o644)
        .open(dir.join(name))?;
    file.write_all(bytes)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Checks that every output the specs declare is present with its declared type; returns
/// every problem at once. Outputs that no spec names are allowed.
pub fn check_outputs(
    specs: &BTreeMap<String, OutputSpec>,
    outputs: &Map<String, Value>,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for (name, spec) in specs {
        // A spec whose type does not parse was refused when the definition was stored.
        let ty = ValueType::parse(&spec.type_name).unwrap_or(ValueType::Any);
        match outputs.get(name) {
            None => problems.push(format!("missing output '{name}' ({})", spec.type_name)),
            Some(value) if !ty.accepts(value) => problems.push(format!(
                "output '{name}' must be {}, got {}",
                spec.type_name,
                json_type_name(value)
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs(v: Value) -> BTreeMap<String, OutputSpec> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn outputs_file_must_be_a_json_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outputs.json");
        let err = read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES).unwrap_err();
        assert!(err.contains("wrote no outputs"), "{err}");
        std::fs::write(&path, "[1,2]").unwrap();
        let err = read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES).unwrap_err();
        assert!(err.contains("holds an array"), "{err}");
        std::fs::write(&path, "{oops").unwrap();
        assert!(
            read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES)
                .unwrap_err()
                .contains("not valid JSON")
        );
        std::fs::write(&path, r#"{"n": 1}"#).unwrap();
        assert_eq!(
            read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES).unwrap()["n"],
            json!(1)
        );
    }

    #[test]
    fn links_fifos_directories_and_huge_files_are_refused_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("host-secret.json");
        std::fs::write(&secret, r#"{"token": "s3cr3t"}"#).unwrap();
        let path = dir.path().join("outputs.json");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let err = read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!err.contains("s3cr3t"));
        std::fs::remove_file(&path).unwrap();

        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let err = read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        assert!(
            read_outputs(&path, DEFAULT_MAX_OUTPUT_BYTES)
                .unwrap_err()
                .contains("not a regular file")
        );
        std::fs::remove_dir(&path).unwrap();

        std::fs::write(&path, format!(r#"{{"pad": "{}"}}"#, "x".repeat(100))).unwrap();
        let err = read_outputs(&path, 64).unwrap_err();
        assert!(
            err.contains("more than the worker's limit of 64 bytes"),
            "{err}"
        );
        assert!(read_outputs(&path, 1_000).is_ok());
    }

    #[test]
    fn a_new_file_is_not_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("host-file");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("inputs.json")).unwrap();
        assert!(write_new_file(dir.path(), "inputs.json", b"{}").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        write_new_file(dir.path(), "other.json", b"{}").unwrap();
        assert_eq!(std::fs::read(dir.path().join("other.json")).unwrap(), b"{}");
    }

    #[test]
    fn every_mismatch_is_reported() {
        let specs = specs(
            json!({"count": {"type": "int"}, "name": {"type": "string"}, "x": {"type": "any"}}),
        );
        let outputs = json!({"count": "3", "x": null, "extra": true});
        let problems = check_outputs(&specs, outputs.as_object().unwrap()).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "output 'count' must be int, got string",
                "missing output 'name' (string)"
            ]
        );
        let outputs = json!({"count": 3, "name": "n", "x": [1]});
        assert!(check_outputs(&specs, outputs.as_object().unwrap()).is_ok());
    }
}
