//! Reading what an op wrote to `outputs.json`, and checking it against its output specs.

use std::collections::BTreeMap;
use std::path::Path;

use gyoza_core::definition::json_type_name;
use gyoza_core::{OutputSpec, ValueType};
use serde_json::{Map, Value};

/// The outputs file as the op wrote it, or a message for the op's author.
pub fn read_outputs(path: &Path) -> Result<Map<String, Value>, String> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the op exited 0 but wrote no outputs: expected a JSON object in \
                 GYOZA_OUTPUT_PATH (/gyoza/{})",
                file_name(path)
            ));
        }
        Err(e) => return Err(format!("cannot read the op's outputs file: {e}")),
    };
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
        let err = read_outputs(&path).unwrap_err();
        assert!(err.contains("wrote no outputs"), "{err}");
        std::fs::write(&path, "[1,2]").unwrap();
        let err = read_outputs(&path).unwrap_err();
        assert!(err.contains("holds an array"), "{err}");
        std::fs::write(&path, "{oops").unwrap();
        assert!(read_outputs(&path).unwrap_err().contains("not valid JSON"));
        std::fs::write(&path, r#"{"n": 1}"#).unwrap();
        assert_eq!(read_outputs(&path).unwrap()["n"], json!(1));
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
