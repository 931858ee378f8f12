//! The broker's error type and its mapping to the one JSON error body.

use kakehashi_interfaces::{ErrorCode, InvalidInput};

/// Everything that can go wrong inside the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS material could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A database operation failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What the broker was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A refusal with a stable code, sent to the client as-is.
    #[error("{code}: {message}")]
    Refused {
        /// Stable reason.
        code: ErrorCode,
        /// Explanation without secrets.
        message: String,
    },
    /// A person code or copy a query's answer was read from memory under
    /// changed before the query's record was committed: nothing was
    /// committed, and the query is answered again
    /// ([`crate::exchange::query`]), so this never reaches a client.
    #[error("the person data a query read changed while it was answered")]
    LookupChanged,
}

impl BrokerError {
    /// A refusal with a code and message.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        BrokerError::Refused {
            code,
            message: message.into(),
        }
    }

    /// An IO error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io {
            context: context.into(),
            source,
        }
    }

    /// The code sent to the client. Internal failures never reveal their detail.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Refused { code, .. } => *code,
            _ => ErrorCode::Internal,
        }
    }

    /// The message sent to the client.
    pub fn public_message(&self) -> String {
        match self {
            BrokerError::Refused { message, .. } => message.clone(),
            _ => "internal error; nothing was changed; the request id is in the broker log".into(),
        }
    }
}

impl From<InvalidInput> for BrokerError {
    fn from(e: InvalidInput) -> Self {
        BrokerError::refused(ErrorCode::InvalidInput, e.to_string())
    }
}
