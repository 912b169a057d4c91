//! Op definitions: versioned templates that runs are created from.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DomainError;
use crate::limits;
use crate::resources::{
    Constraints, EventDelivery, Labels, RetryPolicy, default_queue, queueing_problems,
};
use crate::time::{self, Timestamp};

/// The JSON type an input or output is declared with.
///
/// Python gyoza's own names (`str`, `int`, `float`, `bool`, `dict`, `list`) are accepted as
/// aliases of the JSON Schema names, so definitions written for it keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A JSON string.
    String,
    /// A JSON number without a fractional part.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Anything, unchecked.
    Any,
}

/// Every accepted type name, for error messages.
const TYPE_NAMES: &str =
    "string (str), integer (int), number (float), boolean (bool), object (dict), array (list), any";

impl ValueType {
    /// Parses a type name as written in a spec.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" | "str" => Self::String,
            "integer" | "int" => Self::Integer,
            "number" | "float" => Self::Number,
            "boolean" | "bool" => Self::Boolean,
            "object" | "dict" => Self::Object,
            "array" | "list" => Self::Array,
            "any" => Self::Any,
            _ => return None,
        })
    }

    /// Whether `value` is of this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Number => value.is_number(),
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::Any => true,
        }
    }
}

/// The JSON type name of a value, for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One accepted input of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputSpec {
    /// Type name (see [`ValueType`]).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether a run must provide it (a default also satisfies it).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Value used when a run does not provide the input.
    #[serde(default)]
    pub default: Option<Value>,
}

fn default_true() -> bool {
    true
}

/// One output field a definition promises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputSpec {
    /// Type name (see [`ValueType`]).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A versioned template for runs: an image, its inputs and outputs, and how to run it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OpDefinition {
    /// Human-readable name, unique together with `version`.
    pub id: String,
    /// Version, ideally semantic (`1.2.0`); the highest one is "latest".
    pub version: String,
    /// Docker image reference.
    pub image: String,
    /// Accepted inputs by name.
    #[serde(default)]
    pub input_specs: BTreeMap<String, InputSpec>,
    /// Produced outputs by name.
    #[serde(default)]
    pub output_specs: BTreeMap<String, OutputSpec>,
    /// Hardware each run needs.
    #[serde(default)]
    pub constraints: Constraints,
    /// How failed runs are retried.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Where runs publish their events.
    #[serde(default)]
    pub event_delivery: EventDelivery,
    /// The queue its runs are in unless a run says otherwise.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Labels its runs get (a run's own labels are added over them).
    #[serde(default)]
    pub labels: Labels,
    /// Whether its runs may be preempted (stopped and requeued for a run of higher
    /// priority) unless a run says otherwise.
    #[serde(default)]
    pub preemptible: bool,
    /// When this id+version was first stored.
    #[serde(with = "time::wire")]
    pub created_at: Timestamp,
    /// When this id+version was last replaced.
    #[serde(with = "time::wire")]
    pub updated_at: Timestamp,
}

/// The wire form of a definition: its fields plus the camelCase timestamp keys that the
/// original gyoza emitted for API compatibility.
#[derive(Serialize)]
struct OpDefinitionWire<'a> {
    id: &'a str,
    version: &'a str,
    image: &'a str,
    input_specs: &'a BTreeMap<String, InputSpec>,
    output_specs: &'a BTreeMap<String, OutputSpec>,
    constraints: &'a Constraints,
    retry_policy: &'a RetryPolicy,
    event_delivery: &'a EventDelivery,
    queue: &'a str,
    labels: &'a Labels,
    preemptible: bool,
    created_at: String,
    updated_at: String,
    #[serde(rename = "createdAt")]
    created_at_camel: String,
    #[serde(rename = "updatedAt")]
    updated_at_camel: String,
}

impl Serialize for OpDefinition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let created = time::to_wire(&self.created_at);
        let updated = time::to_wire(&self.updated_at);
        OpDefinitionWire {
            id: &self.id,
            version: &self.version,
            image: &self.image,
            input_specs: &self.input_specs,
            output_specs: &self.output_specs,
            constraints: &self.constraints,
            retry_policy: &self.retry_policy,
            event_delivery: &self.event_delivery,
            queue: &self.queue,
            labels: &self.labels,
            preemptible: self.preemptible,
            created_at: created.clone(),
            updated_at: updated.clone(),
            created_at_camel: created,
            updated_at_camel: updated,
        }
        .serialize(s)
    }
}

impl OpDefinition {
    /// Checks everything a stored definition must satisfy, returning every problem at once.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut errors = Vec::new();
        if self.id.trim().is_empty() {
            errors.push("id must not be empty".to_owned());
        } else if self.id.contains(['/', '?', '#']) || self.id.chars().any(char::is_whitespace) {
            errors.push(format!(
                "id '{}' must not contain '/', '?', '#' or white space (it is part of URLs)",
                self.id
            ));
        }
        if self.version.trim().is_empty() {
            errors.push("version must not be empty".to_owned());
        }
        if self.image.trim().is_empty() {
            errors.push("image must not be empty".to_owned());
        }
        for (name, spec) in &self.input_specs {
            match ValueType::parse(&spec.type_name) {
                None => errors.push(format!(
                    "input '{name}': unknown type '{}' (expected one of {TYPE_NAMES})",
                    spec.type_name
                )),
                Some(ty) => {
                    if let Some(default) = &spec.default {
                        if !ty.accepts(default) {
                            errors.push(format!(
                                "input '{name}': default must be {}, got {}",
                                spec.type_name,
                                json_type_name(default)
                            ));
                        }
                    }
                }
            }
        }
        for (name, spec) in &self.output_specs {
            if ValueType::parse(&spec.type_name).is_none() {
                errors.push(format!(
                    "output '{name}': unknown type '{}' (expected one of {TYPE_NAMES})",
                    spec.type_name
                ));
            }
        }
        if let Err(e) = self.retry_policy.validate() {
            errors.push(e);
        }
        limits::bytes_at_most(&mut errors, "id", &self.id, limits::MAX_ID_BYTES);
        limits::bytes_at_most(
            &mut errors,
            "version",
            &self.version,
            limits::MAX_VERSION_BYTES,
        );
        limits::bytes_at_most(&mut errors, "image", &self.image, limits::MAX_IMAGE_BYTES);
        errors.extend(self.constraints.problems());
        errors.extend(self.retry_policy.problems());
        errors.extend(self.event_delivery.problems());
        errors.extend(queueing_problems(&self.queue, &self.labels));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::InvalidDefinition(errors))
        }
    }

    /// Validates `inputs` against the input specs and applies defaults.
    ///
    /// Every problem is reported at once: missing required inputs and values of the wrong
    /// JSON type. Inputs that no spec names are passed through unchanged.
    pub fn prepare_inputs(
        &self,
        inputs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, DomainError> {
        let mut prepared = inputs.clone();
        let mut errors = Vec::new();
        for (name, spec) in &self.input_specs {
            match inputs.get(name) {
                Some(value) => {
                    // A spec whose type does not parse was refused at upsert; treat it as `any`.
                    let ty = ValueType::parse(&spec.type_name).unwrap_or(ValueType::Any);
                    if !ty.accepts(value) {
                        errors.push(format!(
                            "input '{name}' must be {}, got {}",
                            spec.type_name,
                            json_type_name(value)
                        ));
                    }
                }
                None => match &spec.default {
                    Some(default) => {
                        prepared.insert(name.clone(), default.clone());
                    }
                    None if spec.required => errors.push(format!(
                        "missing required input '{name}' ({})",
                        spec.type_name
                    )),
                    None => {}
                },
            }
        }
        if errors.is_empty() {
            Ok(prepared)
        } else {
            Err(DomainError::InvalidInputs(errors))
        }
    }
}

/// Orders version strings: semantic versions by precedence (a leading `v` and missing minor or
/// patch parts are tolerated), above any version that does not parse; ties by plain text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

fn parse_version(v: &str) -> Option<semver::Version> {
    let v = v.trim().trim_start_matches(['v', 'V']);
    if let Ok(parsed) = semver::Version::parse(v) {
        return Some(parsed);
    }
    // "1" and "1.2" are common in the wild: pad them to three parts.
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let parts = core.split('.').count();
    let padded = match parts {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(specs: Value) -> OpDefinition {
        let now = chrono::Utc::now();
        OpDefinition {
            id: "resize".into(),
            version: "1.0.0".into(),
            image: "resize:1".into(),
            input_specs: serde_json::from_value(specs).unwrap(),
            output_specs: BTreeMap::new(),
            constraints: Constraints::default(),
            retry_policy: RetryPolicy::default(),
            event_delivery: EventDelivery::default(),
            queue: default_queue(),
            labels: Labels::new(),
            preemptible: false,
            created_at: now,
            updated_at: now,
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_are_applied_and_extra_inputs_kept() {
        let def = definition(json!({
            "width": {"type": "int", "required": true},
            "format": {"type": "string", "required": false, "default": "png"},
            "note": {"type": "string", "required": false}
        }));
        let out = def
            .prepare_inputs(&map(json!({"width": 10, "extra": true})))
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"width": 10, "format": "png", "extra": true})
        );
    }

    #[test]
    fn every_input_error_is_reported_at_once() {
        let def = definition(json!({
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "name": {"type": "string"},
            "ratio": {"type": "number", "required": false}
        }));
        let err = def
            .prepare_inputs(&map(json!({"width": "ten", "ratio": 1.5, "name": 3})))
            .unwrap_err();
        let DomainError::InvalidInputs(errors) = err else {
            panic!("wrong error")
        };
        assert_eq!(
            errors,
            vec![
                "missing required input 'height' (integer)",
                "input 'name' must be string, got integer",
                "input 'width' must be integer, got string",
            ]
        );
    }

    #[test]
    fn integer_spec_refuses_fractions_but_number_takes_integers() {
        let def = definition(json!({"n": {"type": "integer"}, "x": {"type": "float"}}));
        assert!(def.prepare_inputs(&map(json!({"n": 1.5, "x": 1}))).is_err());
        assert!(def.prepare_inputs(&map(json!({"n": 2, "x": 1}))).is_ok());
    }

    #[test]
    fn validate_reports_unknown_types_and_bad_defaults() {
        let mut def = definition(json!({
            "a": {"type": "strng"},
            "b": {"type": "bool", "default": "yes"}
        }));
        def.retry_policy.max_attempts = 0;
        let DomainError::InvalidDefinition(errors) = def.validate().unwrap_err() else {
            panic!("wrong error")
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("unknown type 'strng'"));
        assert!(errors[1].contains("default must be bool, got string"));
        assert!(errors[2].contains("max_attempts"));
    }

    #[test]
    fn versions_order_semantically() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("2", "1.9.9"), Ordering::Greater);
        assert_eq!(compare_versions("v1.2", "1.1.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("latest", "0.0.1"), Ordering::Less);
    }

    #[test]
    fn wire_form_has_both_timestamp_spellings() {
        let def = definition(json!({}));
        let v = serde_json::to_value(&def).unwrap();
        assert_eq!(v["created_at"], v["createdAt"]);
        assert_eq!(v["updated_at"], v["updatedAt"]);
        let back: OpDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(back.id, "resize");
    }
}
