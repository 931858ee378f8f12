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

/// The decoded `name=value` pairs of a query string (percent and `+`
/// decoding by `form_urlencoded`); a name given twice keeps the last.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        pairs.retain(|(n, _)| n.as_str() != name);
        pairs.push((name.into_owned(), value.into_owned()));
    }
    pairs
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

/// serde's own data errors, which may quote the offending value; every
/// other data error comes from our validation ([`kakehashi_interfaces::InvalidInput`],
/// "field: rule"), which never echoes a value.
const SERDE_OWN: [&str; 7] = [
    "invalid type",
    "invalid value",
    "invalid length",
    "unknown field",
    "missing field",
    "duplicate field",
    "unknown variant",
];

fn redact_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let position = format!("line {} column {}", e.line(), e.column());
    // serde_json appends " at line L column C"; 0/0 means "the whole value".
    let text = msg
        .strip_suffix(&format!(" at {position}"))
        .unwrap_or(&msg)
        .to_string();
    let located = if e.line() == 0 {
        String::new()
    } else {
        format!(" at {position}")
    };
    if e.classify() == serde_json::error::Category::Data
        && !SERDE_OWN.iter().any(|p| text.starts_with(p))
    {
        // Our validation: field and rule, safe to show.
        return format!("{text}{located}");
    }
    // serde_json may quote the offending string value (e.g. in "invalid value: string \"…\"");
    // keep the category and position only, so no item value or number is echoed.
    let category = match e.classify() {
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Eof => "unexpected end of JSON",
        serde_json::error::Category::Io => "could not read JSON",
        serde_json::error::Category::Data => "invalid or unknown field",
    };
    // Only these messages put a field name in backticks; the others may
    // put the value there (`invalid type: integer `123…``).
    let names_field = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| text.starts_with(p));
    let field_hint = msg
        .split('`')
        .nth(1)
        .filter(|_| names_field)
        .filter(|f| {
            f.len() <= 64
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .map(|f| format!(" (`{f}`)"))
        .unwrap_or_default();
    format!("{category}{field_hint}{located}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_interfaces::query::QueryRequest;

    fn message(body: &str) -> String {
        match parse_json::<QueryRequest>(body.as_bytes()) {
            Err(e) => e.public_message(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_validation_error_names_the_field_and_the_rule() {
        let body = r#"{"flow_id":"F-1","procedure":"p","provider":"city-a","person":"PERSON0001","items":[],"reply_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
        let text = message(body);
        assert!(
            text.contains("reply_key: must not be the all-zero key"),
            "{text}"
        );
        assert!(!text.contains("line 0"), "{text}");
    }

    #[test]
    fn a_value_serde_quotes_is_never_echoed() {
        let text = message(r#"{"flow_id": 12345678901234}"#);
        assert!(!text.contains("12345678901234"), "{text}");
        let text = message(r#"{"flow_id":"F-1","extra":1}"#);
        assert!(text.contains("(`extra`)"), "{text}");
    }
}
