//! [`Snapshot`]: one consistent read view of the database, for the long
//! reads (verification, export, the sealer's tail walk) that must see one
//! state while brokers append and purge. Made by
//! [`super::backend::Backend::snapshot`]; the modules that read through it
//! add their statements as methods of their own, written once for both
//! backends with [`crate::on_snapshot!`].

/// A read-only transaction (REPEATABLE READ on PostgreSQL).
pub(crate) enum Snapshot {
    /// SQLite: a read transaction on a reader connection.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// PostgreSQL: a REPEATABLE READ, READ ONLY transaction.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs `$body` with `$tx` bound to the snapshot's transaction, whichever
/// the backend: the body is expanded once per backend (as
/// [`crate::on_pool!`] does for pools), so the statement text is shared.
#[macro_export]
macro_rules! on_snapshot {
    ($snap:expr, |$tx:ident| $body:expr) => {
        match $snap {
            $crate::store::Snapshot::Sqlite($tx) => $body,
            $crate::store::Snapshot::Postgres($tx) => $body,
        }
    };
}
