//! The HTTP edge: JSON responses, the one error body, bounded body reading.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use kakehashi_interfaces::{ErrorBody, ErrorCode};
use serde::Serialize;

use crate::error::BrokerError;

/// Every response body is a complete buffer.
pub type Body = Full<Bytes>;

/// A fresh request id (16 hex chars), echoed in error bodies and logs.
pub fn request_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, Bytes::from(bytes), "application/json"),
        Err(_) => with_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(
                b"{\"code\":\"internal\",\"message\":\"encoding failed\",\"request_id\":\"\"}",
            ),
            "application/json",
        ),
    }
}

/// A plain-text response.
pub fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    with_type(status, body.into(), content_type)
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The error body for `err`, with its status.
pub fn error(err: &BrokerError, request_id: &str) -> Response<Body> {
    let code = err.code();
    error_with(code, err.public_message(), request_id)
}

/// The error body for a code and message.
pub fn error_with(code: ErrorCode, message: String, request_id: &str) -> Response<Body> {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &ErrorBody {
            code,
            message,
            request_id: request_id.to_string(),
        },
    )
}

/// Reads a request body of at most `max` bytes within `timeout`.
/// Over the limit → `payload_too_large`, before anything is stored.
pub async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, BrokerError> {
    let too_large = || {
        BrokerError::refused(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than the limit of {max} bytes; split it into smaller batches"),
        )
    };
    if declared.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            "request body was not received in time",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            "request body could not be read",
        )),
    }
}

/// Parses a JSON request body into a validated interface type.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's message names the field and position, never echoes a whole value.
        BrokerError::refused(
            ErrorCode::InvalidInput,
            format!("request body: {}", redact_serde(&e)),
        )
    })
}

fn redact_serde(e: &serde_json::Error) -> String {
    // serde_json may quote the offending string value (e.g. in "invalid value: string \"…\"");
    // keep the category and position only, so no item value or number is echoed.
    let category = match e.classify() {
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Eof => "unexpected end of JSON",
        serde_json::error::Category::Io => "could not read JSON",
        serde_json::error::Category::Data => "invalid or unknown field",
    };
    let msg = e.to_string();
    let field_hint = msg
        .split('`')
        .nth(1)
        .filter(|f| {
            f.len() <= 64
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .map(|f| format!(" (`{f}`)"))
        .unwrap_or_default();
    format!(
        "{category}{field_hint} at line {} column {}",
        e.line(),
        e.column()
    )
}
