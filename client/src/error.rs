//! The one error type of the client library.

use std::time::Duration;

use kakehashi_interfaces::ErrorCode;

/// Everything that can go wrong talking to a broker.
///
/// Messages name files, hosts and reason codes; they never contain key
/// material, Individual Numbers or item values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The profile, config file or one of its files is unusable.
    #[error("{message}")]
    Config {
        /// What is wrong, naming the file or setting.
        message: String,
    },
    /// The broker could not be reached, or the connection broke.
    #[error("cannot reach the broker at {broker}: {message}")]
    Transport {
        /// The broker URL.
        broker: String,
        /// What failed.
        message: String,
    },
    /// The TLS handshake failed or the broker refused the client certificate.
    #[error("TLS with the broker at {broker} failed: {message}")]
    Tls {
        /// The broker URL.
        broker: String,
        /// What failed.
        message: String,
    },
    /// No answer in time.
    #[error("{what} timed out after {}s", after.as_secs())]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The broker refused the request with a typed error body.
    #[error("the broker refused the request: {code}: {message} (request id {request_id})")]
    Refused {
        /// Stable reason code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
        /// Request id to quote to the broker's operator.
        request_id: String,
        /// `Retry-After` of a 429 or 503, when retries were exhausted.
        retry_after: Option<Duration>,
    },
    /// The broker answered something this client does not understand.
    #[error("unexpected answer from the broker{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Protocol {
        /// HTTP status, if a response arrived.
        status: Option<u16>,
        /// What was wrong with it.
        message: String,
    },
    /// The provision permit of an answer did not verify; the answer was not opened.
    #[error("the permit of query {query_id} did not verify: {message}")]
    Permit {
        /// The query.
        query_id: String,
        /// Why.
        message: String,
    },
    /// The sealed answer could not be opened.
    #[error("cannot open the answer of query {query_id}: {message}")]
    Envelope {
        /// The query.
        query_id: String,
        /// Why.
        message: String,
    },
    /// The reply-key store of a profile (the kept keys of pending queries) is
    /// unusable: permissions too wide, a file altered, or a key that does
    /// not open it.
    #[error("reply-key store {}: {message}", path.display())]
    KeyStore {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A value given to the library failed validation before anything was sent.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] kakehashi_interfaces::InvalidInput),
}

impl ClientError {
    /// The broker's reason code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        ClientError::Config {
            message: message.into(),
        }
    }
}
