//! How PostgreSQL commits provision records: the common commit as one
//! statement (one round trip instead of four: begin, lock, insert, commit),
//! into month partitions made ahead of use; a purge drops whole months.

use std::collections::BTreeSet;

use async_trait::async_trait;
use kakehashi_interfaces::audit::Hash;
use sqlx::PgPool;

use crate::error::BrokerError;
use crate::store::records::rows::{NewRow, Prepared, PreparedRow, PurgePlan};
use crate::store::records::{
    chunk_statement, commit_in_tx, AtFailure, Chain, Committer, INSERT_HEAD_PG,
};

/// The records writer's committer on PostgreSQL.
pub(crate) struct PgCommitter {
    pool: PgPool,
    /// Months whose partitions exist (created on first use).
    ensured_months: BTreeSet<i32>,
}

impl PgCommitter {
    /// A committer on `pool`.
    pub(crate) fn new(pool: PgPool) -> PgCommitter {
        PgCommitter {
            pool,
            ensured_months: BTreeSet::new(),
        }
    }
}

#[async_trait]
impl Committer for PgCommitter {
    async fn make_room(&mut self, rows: &[&NewRow]) -> Result<(), BrokerError> {
        for row in rows {
            if self.ensured_months.insert(row.part_month) {
                super::partitions::ensure(&self.pool, row.part_month).await?;
            }
        }
        Ok(())
    }

    fn has_fast_path(&self) -> bool {
        true
    }

    async fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<crate::store::lookup_generation::LookupStamp>,
    ) -> Result<(), AtFailure> {
        // A single statement is its own transaction.
        chunk_statement!(sqlx::Postgres, INSERT_HEAD_PG, true, rows, old, generation)
            .build()
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn commit_locked<'a>(
        &mut self,
        rows: &[&'a NewRow],
        purge: Option<&PurgePlan>,
        chain: Chain,
    ) -> Result<Prepared<'a>, BrokerError> {
        commit_in_tx!(
            &self.pool,
            sqlx::Postgres,
            INSERT_HEAD_PG,
            true,
            rows,
            purge,
            chain,
            super::partitions::drop_purged
        )
    }
}
