//! The lookup generation: one number the database bumps, in the same
//! transaction, with every change to person codes or copies and every
//! person added or erased (by trigger, both backends). An answer read from
//! the lookups' memory carries the generation it holds under
//! ([`LookupStamp`]); its record commits only while the number is still
//! that (`store::records::chunk_statement!`). How a backend reads the
//! number cheaply is its [`crate::store::backend::GenerationReader`].

use crate::error::BrokerError;
use crate::store::Pools;

/// The stamp of an answer read from memory: the lookup generation it holds
/// under. The query's record, committed with it, commits only while the
/// database's generation is still this one; otherwise the commit answers
/// [`crate::records::Commit::Stale`] and the query is answered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupStamp(i64);

impl LookupStamp {
    /// The stamp of answers held under `generation`.
    pub(crate) fn new(generation: i64) -> LookupStamp {
        LookupStamp(generation)
    }

    /// The lookup generation, as the database stores it.
    pub fn generation(self) -> i64 {
        self.0
    }
}

/// The lookup generation, read through the pool. It is bumped by triggers in the same transaction as
/// every change to person codes or copies and every person added or erased
/// (migrations `0005_lookup_generation.sql`, `0107_persons_per_insurer.sql`;
/// on PostgreSQL at commit, once).
///
/// On PostgreSQL each statement reads a snapshot taken after the one
/// before it, so the answers read after this number see every change the
/// number counts, as on SQLite.
///
/// On SQLite it is read in place when it can be
/// (the backend's [`crate::store::backend::GenerationReader`]).
pub(crate) async fn generation_now(pools: &Pools) -> Result<i64, BrokerError> {
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_scalar(GENERATION_SQL).fetch_one(pool).await?
    }))
}

/// Sets the lookup generation, as the triggers do on a change (tests).
#[cfg(test)]
pub(crate) async fn set_generation(pools: &Pools, n: i64) {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("UPDATE lookup_generation SET n = $1 WHERE id = 1")
            .bind(n)
            .execute(pool)
            .await
            .expect("set the lookup generation");
    })
}

/// The one row the lookup generation is.
pub(crate) const GENERATION_SQL: &str = "SELECT n FROM lookup_generation WHERE id = 1";
