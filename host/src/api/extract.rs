//! Request extractors whose rejections follow the error policy (see [`crate::error`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Malformed JSON is a 400, JSON of the wrong shape a 422 naming the field;
/// the `Content-Type` is not checked, as clients of the original server did not all send one.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("Request body is larger than the server accepts".into())
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document with the error policy's statuses: syntax first (400), then shape
/// (422, naming the offending field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let document: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("Malformed JSON body: {e}")))?;
    from_value(document)
}

/// A JSON value of the wrong shape is a 422 naming the offending field.
pub fn from_value<T: DeserializeOwned>(document: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::Unprocessable(format!("Invalid request body: {inner}"))
        } else {
            ApiError::Unprocessable(format!("Invalid request body at '{path}': {inner}"))
        }
    })
}

/// Query parameters; a malformed query string is a 422.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| ApiQuery(query.0))
            .map_err(|e| {
                ApiError::Unprocessable(format!("Invalid query parameters: {}", e.body_text()))
            })
    }
}

/// Parses an integer query parameter, naming it in the error.
pub fn int_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::Unprocessable(format!(
                    "Query parameter '{name}' must be an integer, got '{v}'"
                ))
            })
        })
        .transpose()
}

/// An integer query parameter that must lie in `range`, `default` when absent; a 422 naming it
/// and the range otherwise.
pub fn bounded_param(
    name: &str,
    value: Option<&str>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    let value = int_param(name, value)?.unwrap_or(default);
    if !range.contains(&value) {
        return Err(ApiError::Unprocessable(format!(
            "Query parameter '{name}' must be between {} and {}, got {value}",
            range.start(),
            range.end()
        )));
    }
    Ok(value)
}
