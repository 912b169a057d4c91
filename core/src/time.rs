//! Timestamps.
//!
//! The wire shows times as Python's `datetime.isoformat()` does for an aware UTC datetime
//! (`2026-11-25T21:07:29.123456+00:00`), so that the original clients parse them unchanged.
//! Stores keep them as integer microseconds since the UNIX epoch, which sort and compare in SQL.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// A UTC timestamp.
pub type Timestamp = DateTime<Utc>;

/// Formats a timestamp as the wire shows it.
pub fn to_wire(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Microseconds since the UNIX epoch, as stores keep timestamps.
pub fn to_micros(t: &Timestamp) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`]; out-of-range values saturate to the epoch.
pub fn from_micros(micros: i64) -> Timestamp {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// Serde adapter: serialise as [`to_wire`], accept any RFC 3339 timestamp.
pub mod wire {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises `t` in the wire format.
    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_wire(t))
    }

    /// Parses an RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for `Option<Timestamp>`, as [`wire`] does for a present value.
pub mod wire_opt {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises `t` in the wire format, or `null`.
    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::to_wire(t)),
            None => s.serialize_none(),
        }
    }

    /// Parses an RFC 3339 timestamp or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|text| {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_matches_python_isoformat() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 21, 7, 29).unwrap();
        assert_eq!(to_wire(&t), "2026-11-25T21:07:29.000000+00:00");
    }

    #[test]
    fn micros_round_trip() {
        let t = from_micros(1_764_104_849_123_456);
        assert_eq!(to_micros(&t), 1_764_104_849_123_456);
    }
}
