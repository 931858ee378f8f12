//! The query path's read, batched: concurrent queries' person mappings and
//! copy reads go to the database together, one statement per batch.
//!
//! Each statement is a hand-off to a database connection (on SQLite, to that
//! connection's own thread) and back; under load those context switches cost
//! as much CPU as the reads. One task collects whatever lookups are waiting
//! and answers them all from one `VALUES` list joined with `person_codes` and
//! `copies`, so the hand-off is paid once per batch instead of per query, on
//! a database connection of its own.
//!
//! The answers are also kept in memory ([`cache`]), valid while the
//! database's lookup generation holds. A lookup the cache holds is answered
//! in the query's own task, without the hand-off to the batching task and
//! without reading the generation: the answer carries the generation it was
//! kept under, and the query's record commits only if the database's
//! generation is still that one — checked inside the commit's own
//! transaction ([`crate::records::RecordLog::append_answer`]). Else nothing
//! commits and the query is asked again with `fresh`, which goes to the task
//! and reads the number first. So answers still follow every change
//! committed before their query came, whoever made it.

pub mod cache;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::error::BrokerError;
use crate::store::backend::GenerationReader;
pub use crate::store::lookup_generation::LookupStamp;
use crate::store::Pools;

/// Lookups answered by one statement at most (4 binds each).
const MAX_BATCH: usize = 128;

/// One query's read: the requester's code for the person, and the provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// The requester org.
    pub requester: String,
    /// The person's code at the requester.
    pub requester_code: String,
    /// The provider org.
    pub provider: String,
}

/// What the database holds for one [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The requester has no person with that code.
    UnknownToRequester,
    /// The person is known, but the provider has no code for them.
    NotLinkedByProvider,
    /// The provider's code, and its deposited copy (sealed) if any.
    Provider {
        /// The provider's code for the person.
        code: String,
        /// The copy as stored (AES-GCM at rest), if deposited; shared, so an
        /// answer from the cache costs no copy of it.
        cipher: Option<std::sync::Arc<[u8]>>,
    },
}

/// What the database holds for a lookup, and the stamp it holds under if it
/// was read from memory without asking (`None`: read under a generation read
/// after the lookup was asked).
pub type Answer = (Found, Option<LookupStamp>);

type Reply = oneshot::Sender<Result<Found, String>>;

/// A lookup for the batching task, and where its answer goes.
type Asked = (Lookup, Reply);

/// Handle to the batching task and the answers kept in memory.
#[derive(Clone)]
pub struct Lookups {
    tx: mpsc::Sender<Asked>,
    cache: Shared,
    metrics: crate::metrics::LookupMetrics,
}

/// The cache, read by every query and written by the batching task alone.
type Shared = Arc<Mutex<cache::Cache>>;

/// The cache, even if a holder panicked: its state is a map and a number,
/// whole after every call, and at worst it answers a miss.
fn locked(cache: &Shared) -> MutexGuard<'_, cache::Cache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lookups {
    /// Starts the batching task on the current runtime.
    pub fn start(pools: Pools, metrics: crate::metrics::LookupMetrics) -> Lookups {
        Lookups::spawn(pools, metrics)
    }

    fn spawn(pools: Pools, metrics: crate::metrics::LookupMetrics) -> Lookups {
        let (tx, rx) = mpsc::channel(4096);
        let cache: Shared = Arc::new(Mutex::new(cache::Cache::new(cache::MAX_BYTES)));
        // The task runs one batch at a time, so one connection of its own
        // serves it: always the same SQLite thread or PostgreSQL backend
        // (prepared statements and plans stay warm), no pool hand-out per
        // batch; the generation is read as the backend reads it fastest.
        let own = pools.own(1);
        let how = own.clone().generation_reader();
        tokio::spawn(run(rx, own, how, cache.clone(), metrics.clone()));
        Lookups { tx, cache, metrics }
    }

    /// Maps and reads for one query: from memory if the cache holds the
    /// lookup (the answer then carries the generation it holds under), else
    /// in the batch it joins, which reads the lookup generation first.
    /// `fresh` skips memory, as after an answer from it turned out stale.
    pub async fn find(&self, lookup: Lookup, fresh: bool) -> Result<Answer, BrokerError> {
        if !fresh {
            if let Some(answer) = self.in_memory(&lookup) {
                return Ok(answer);
            }
        }
        let (reply, answer) = oneshot::channel();
        let unavailable = || {
            BrokerError::refused(
                kakehashi_interfaces::ErrorCode::Unavailable,
                "the broker is shutting down; try again",
            )
        };
        self.tx
            .send((lookup, reply))
            .await
            .map_err(|_| unavailable())?;
        let found = answer
            .await
            .map_err(|_| unavailable())?
            .map_err(BrokerError::Config)?;
        Ok((found, None))
    }

    fn in_memory(&self, lookup: &Lookup) -> Option<Answer> {
        let (found, held) = locked(&self.cache).get(lookup)?;
        self.metrics.observe(1, 0, false);
        Some((found, Some(LookupStamp::new(held))))
    }
}

async fn run(
    mut rx: mpsc::Receiver<Asked>,
    pools: Pools,
    mut how: Box<dyn GenerationReader>,
    cache: Shared,
    metrics: crate::metrics::LookupMetrics,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (lookups, replies): (Vec<Lookup>, Vec<Reply>) = batch.into_iter().unzip();
        match answer(&pools, &mut how, &cache, &metrics, &lookups).await {
            Ok(found) => {
                for (reply, found) in replies.into_iter().zip(found) {
                    let _ = reply.send(Ok(found));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, lookups = lookups.len(), "person lookup failed");
                for reply in replies {
                    let _ = reply.send(Err("the person lookup failed".into()));
                }
            }
        }
    }
    // The connection is this task's own: close it with the task.
    pools.close_own().await;
}

/// Answers a batch under a lookup generation read first: from the cache
/// where that number is the cache's, else from the database (and keeps what
/// it read). Reading first means an answer is never kept under a number
/// older than a change it missed. The cache is never held across an await.
async fn answer(
    pools: &Pools,
    how: &mut Box<dyn GenerationReader>,
    cache: &Shared,
    metrics: &crate::metrics::LookupMetrics,
    lookups: &[Lookup],
) -> Result<Vec<Found>, BrokerError> {
    let now = how.read().await?;
    let split = {
        let mut held = locked(cache);
        let had = !held.is_empty();
        let reset = held.observe(now) && had;
        let split = held.split(lookups);
        metrics.observe(
            split.answers.iter().filter(|a| a.is_some()).count(),
            split.misses.len(),
            reset,
        );
        split
    };
    if split.misses.is_empty() {
        return Ok(cache::fill(lookups, split, &[]));
    }
    let asked: Vec<Lookup> = split.misses.iter().map(|&i| lookups[i].clone()).collect();
    let read: Vec<(usize, Found)> = split
        .misses
        .iter()
        .copied()
        .zip(find_all(pools, &asked).await?)
        .collect();
    {
        // Still at `now`: this task is the cache's only writer.
        let mut held = locked(cache);
        for (i, found) in &read {
            held.store(lookups[*i].clone(), found.clone());
        }
    }
    Ok(cache::fill(lookups, split, &read))
}

/// The rows of one batch: `(index, provider code, copy)` per lookup whose
/// requester code exists; absent indexes are unknown to their requester.
type Row = (i64, Option<String>, Option<Vec<u8>>);

const HEAD: &str = "WITH asked (i, requester, code, provider) AS (";
/// The requester's code maps to the provider's code for the same Individual
/// Number (its keyed hash): the provider's own person when the provider is
/// an insurer, its link when not ([`crate::identity`]). An insurer's code
/// (`person_id` set) stands for a registered person; between two linking
/// orgs' codes the link is in force only while some insurer has registered
/// the number, and otherwise answers as unlinked.
const TAIL: &str = ") SELECT a.i, p.code, c.cipher FROM asked a
     JOIN person_codes r ON r.org_id = a.requester AND r.code = a.code
     LEFT JOIN person_codes p ON p.org_id = a.provider AND p.number_hash = r.number_hash
         AND (r.person_id IS NOT NULL OR p.person_id IS NOT NULL
              OR EXISTS (SELECT 1 FROM persons s WHERE s.number_hash = r.number_hash))
     LEFT JOIN copies c ON c.provider = a.provider AND c.person_code = p.code";

/// Answers every lookup in one statement, in the order asked.
pub async fn find_all(pools: &Pools, lookups: &[Lookup]) -> Result<Vec<Found>, BrokerError> {
    let mut found = vec![Found::UnknownToRequester; lookups.len()];
    if lookups.is_empty() {
        return Ok(found);
    }
    let indexed: Vec<(i64, &Lookup)> = lookups
        .iter()
        .enumerate()
        .map(|(i, l)| (i64::try_from(i).unwrap_or(i64::MAX), l))
        .collect();
    let rows: Vec<Row> = crate::on_pool!(pools, read, |pool| {
        let mut sql = sqlx::QueryBuilder::new(HEAD);
        sql.push("VALUES ");
        let mut values = sql.separated(", ");
        for (i, l) in &indexed {
            values.push("(");
            values.push_bind_unseparated(*i);
            values.push_unseparated(", ");
            values.push_bind_unseparated(l.requester.as_str());
            values.push_unseparated(", ");
            values.push_bind_unseparated(l.requester_code.as_str());
            values.push_unseparated(", ");
            values.push_bind_unseparated(l.provider.as_str());
            values.push_unseparated(")");
        }
        sql.push(TAIL);
        sql.build_query_as::<Row>().fetch_all(pool).await?
    });
    for (i, code, cipher) in rows {
        let Some(slot) = usize::try_from(i).ok().and_then(|i| found.get_mut(i)) else {
            continue;
        };
        *slot = match code {
            None => Found::NotLinkedByProvider,
            Some(code) => Found::Provider {
                code,
                cipher: cipher.map(std::sync::Arc::from),
            },
        };
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    /// An answer from memory comes with the generation it holds under,
    /// unread; `fresh` reads the number first and so sees a change.
    #[tokio::test]
    async fn answers_from_memory_carry_their_generation_and_fresh_ones_read_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db"))
            .await
            .expect("store");
        let pools = store.pools();
        crate::store::lookup_generation::set_generation(&pools, 3).await;
        // The record commit checks the number (records::writer's and
        // store::sqlite::direct's tests).
        let lookups = Lookups::spawn(store.pools(), Default::default());
        let ask = || Lookup {
            requester: "city-a".into(),
            requester_code: "c0de".into(),
            provider: "city-b".into(),
        };
        let found = Found::UnknownToRequester;
        // Read from the database, under a number read first.
        assert_eq!(
            lookups.find(ask(), false).await.expect("found"),
            (found.clone(), None)
        );
        // From memory, under the number it was read under.
        assert_eq!(
            lookups.find(ask(), false).await.expect("found"),
            (found.clone(), Some(LookupStamp::new(3)))
        );

        crate::store::lookup_generation::set_generation(&pools, 4).await;
        // Memory does not know yet: its answer says which number it needs.
        assert_eq!(
            lookups.find(ask(), false).await.expect("found"),
            (found.clone(), Some(LookupStamp::new(3)))
        );
        // Fresh: the number is read, the cache starts over.
        assert_eq!(
            lookups.find(ask(), true).await.expect("found"),
            (found.clone(), None)
        );
        assert_eq!(
            lookups.find(ask(), false).await.expect("found"),
            (found, Some(LookupStamp::new(4)))
        );
    }
}
