//! The broker's error type and its mapping to the one JSON error body.
//!
//! Variants say what happened, so an operator reading a log knows where to
//! look: a bad configuration file, TLS material, the database, data read
//! back from it that does not parse (corrupt), or a fault in the broker
//! itself. Only [`BrokerError::Refused`] reaches a client with its message;
//! everything else answers `internal` and is logged with its detail.

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
    /// Data read back from storage is not what the broker writes (a row
    /// that does not parse, a ciphertext that does not open): the database
    /// was changed outside the broker, or restored from elsewhere.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A fault inside the broker: an encoding that cannot fail did, an
    /// invariant did not hold.
    #[error("internal fault: {0}")]
    Internal(String),
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

    /// A value the broker made could not be encoded (JSON of its own types).
    pub fn encoding(what: &str, e: impl std::fmt::Display) -> Self {
        BrokerError::Internal(format!("encoding {what}: {e}"))
    }

    /// The code sent to the client. Internal failures never reveal their
    /// detail; a database that cannot be reached is `unavailable` (503), a
    /// passing state a retry may get past.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Refused { code, .. } => *code,
            BrokerError::Storage(e) if database_unreachable(e) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The message sent to the client.
    pub fn public_message(&self) -> String {
        match self {
            BrokerError::Refused { message, .. } => message.clone(),
            BrokerError::Storage(e) if database_unreachable(e) => {
                "the database is unavailable; nothing was answered; try again".into()
            }
            _ => "internal error; nothing was changed; the request id is in the broker log".into(),
        }
    }
}

/// Whether `e` says the database could not be reached or gave up on the
/// statement (restarting, connection lost, pool exhausted, statement or
/// lock timeout), rather than that the statement itself was wrong.
pub fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: admin or crash shutdown,
            // cannot connect now; 57014: statement timeout (query canceled);
            // 55P03: lock not available; 53300: too many connections;
            // 25P03: idle-in-transaction timeout.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "53300" | "25P03"
                )
        }),
        _ => false,
    }
}

impl From<InvalidInput> for BrokerError {
    fn from(e: InvalidInput) -> Self {
        BrokerError::refused(ErrorCode::InvalidInput, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_fault_reads_differently_and_none_reaches_the_client() {
        let faults = [
            BrokerError::Config("[storage] needs exactly one backend".into()),
            BrokerError::Corrupt("a stored copy is not valid JSON".into()),
            BrokerError::Internal("encoding permit: x".into()),
        ];
        let texts: Vec<String> = faults.iter().map(|e| e.to_string()).collect();
        assert!(texts[0].starts_with("configuration: "));
        assert!(texts[1].starts_with("corrupt stored data: "));
        assert!(texts[2].starts_with("internal fault: "));
        for e in &faults {
            assert_eq!(e.code(), ErrorCode::Internal);
            assert!(!e.public_message().contains("JSON"));
        }
    }
}
