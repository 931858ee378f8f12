//! What the query path's reads found, kept in memory while the database says
//! nothing they depend on has changed.
//!
//! Why: on SQLite every commit by another connection (the records writer
//! commits about a thousand times a second under load) makes a reading
//! connection drop its whole page cache, so each lookup re-read its B-tree
//! pages from the file — most of the lookup connection's time. On
//! PostgreSQL the three-table join per batch was a third of the database
//! server's CPU under load. The person codes and copies themselves change
//! rarely (deposits, registrations, retention), so their answers are kept
//! here instead.
//!
//! Validity rests on one number, the *lookup generation*: a row that triggers
//! on `person_codes`, `copies` and `persons` (added or erased) bump in the
//! same transaction as any change (whoever writes: this broker, the command
//! line, another process; on PostgreSQL once per transaction, at its
//! commit). An answer from memory is not read for: it carries the cache's
//! number and its record commits only if the database still has it
//! ([`super`]); a query whose answer was stale reads the number first when
//! asked again, and a different number empties the cache. An answer is only
//! ever stored under a generation read *before* the answer was read, so a
//! change committed in between shows as a new number and the answer is
//! dropped then.
//!
//! Only what the database holds is kept: person codes and copies still sealed
//! (AES-GCM at rest), never an opened copy.

use std::collections::HashMap;

use super::{Found, Lookup};

/// Bytes of codes and sealed copies the cache holds at most. When full it
/// starts over empty, which keeps the bound without bookkeeping per entry;
/// the database answers the misses as it did before the cache existed.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// Answers by lookup, valid for one generation.
#[derive(Debug, Default)]
pub struct Cache {
    generation: Option<i64>,
    entries: HashMap<Lookup, Found>,
    bytes: usize,
    max_bytes: usize,
}

/// A batch split by what the cache already knows.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// Per lookup, in the order asked: the answer if cached.
    pub answers: Vec<Option<Found>>,
    /// Positions of the lookups the database must answer, each distinct
    /// lookup once (the first position asking it).
    pub misses: Vec<usize>,
}

impl Cache {
    /// An empty cache holding at most `max_bytes` of codes and ciphertext.
    pub fn new(max_bytes: usize) -> Cache {
        Cache {
            max_bytes,
            ..Cache::default()
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The generation the held answers belong to, once one was observed.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Adopts the generation the database reports now; a different one than
    /// the cache's empties it. Returns whether the cache was emptied.
    pub fn observe(&mut self, generation: i64) -> bool {
        if self.generation == Some(generation) {
            return false;
        }
        self.clear();
        self.generation = Some(generation);
        true
    }

    /// The answer kept for one lookup, with the generation it holds under.
    pub fn get(&self, lookup: &Lookup) -> Option<(Found, i64)> {
        let generation = self.generation?;
        Some((self.entries.get(lookup)?.clone(), generation))
    }

    /// Splits a batch into cached answers and what the database must read.
    pub fn split(&self, lookups: &[Lookup]) -> Split {
        let mut answers = Vec::with_capacity(lookups.len());
        let mut misses = Vec::new();
        for (i, lookup) in lookups.iter().enumerate() {
            let cached = self.entries.get(lookup).cloned();
            if cached.is_none() && !lookups[..i].contains(lookup) {
                misses.push(i);
            }
            answers.push(cached);
        }
        Split { answers, misses }
    }

    /// Keeps what the database answered, under the generation observed
    /// before it was read. Empties itself first if it would grow past its bound.
    pub fn store(&mut self, lookup: Lookup, found: Found) {
        if self.generation.is_none() {
            // Nothing observed: no number would tell when this went stale.
            return;
        }
        let key = key_bytes(&lookup);
        let size = key + size_of_found(&found);
        if size > self.max_bytes {
            return;
        }
        if self.bytes + size > self.max_bytes {
            // Starting over keeps the generation: it still holds.
            self.clear();
        }
        if let Some(old) = self.entries.insert(lookup, found) {
            // The key was already counted with the entry it replaces.
            self.bytes = self.bytes.saturating_sub(key + size_of_found(&old));
        }
        self.bytes += size;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Fills the gaps of a split with the database's answers, by position.
/// Lookups asked twice in one batch get the one answer read for both.
pub fn fill(lookups: &[Lookup], split: Split, read: &[(usize, Found)]) -> Vec<Found> {
    let Split { mut answers, .. } = split;
    for (i, lookup) in lookups.iter().enumerate() {
        if answers[i].is_some() {
            continue;
        }
        answers[i] = read
            .iter()
            .find(|(at, _)| lookups.get(*at) == Some(lookup))
            .map(|(_, found)| found.clone());
    }
    answers
        .into_iter()
        // A position with no answer read is one the database was not asked:
        // impossible by construction, answered as the safe refusal.
        .map(|a| a.unwrap_or(Found::UnknownToRequester))
        .collect()
}

fn key_bytes(lookup: &Lookup) -> usize {
    lookup.requester.len() + lookup.requester_code.len() + lookup.provider.len()
}

#[cfg(test)]
fn entry_bytes(lookup: &Lookup, found: &Found) -> usize {
    key_bytes(lookup) + size_of_found(found)
}

fn size_of_found(found: &Found) -> usize {
    // Fixed overhead per entry: the map slot and the strings' headers.
    const OVERHEAD: usize = 160;
    OVERHEAD
        + match found {
            Found::Provider { code, cipher } => code.len() + cipher.as_ref().map_or(0, |c| c.len()),
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(code: &str) -> Lookup {
        Lookup {
            requester: "union-saitama".into(),
            requester_code: code.into(),
            provider: "city-saitama".into(),
        }
    }

    fn copy(code: &str) -> Found {
        Found::Provider {
            code: code.into(),
            cipher: Some(vec![7; 100].into()),
        }
    }

    #[test]
    fn nothing_is_kept_before_a_generation_is_observed() {
        let mut cache = Cache::new(MAX_BYTES);
        cache.store(ask("a"), copy("x"));
        assert!(cache.is_empty());
        assert_eq!(cache.split(&[ask("a")]).misses, vec![0]);
    }

    #[test]
    fn a_stored_answer_is_served_while_the_generation_holds() {
        let mut cache = Cache::new(MAX_BYTES);
        assert!(cache.observe(5));
        cache.store(ask("a"), copy("x"));
        assert!(!cache.observe(5));
        assert_eq!(cache.get(&ask("a")), Some((copy("x"), 5)));
        assert_eq!(cache.get(&ask("b")), None);
        let split = cache.split(&[ask("a"), ask("b")]);
        assert_eq!(split.answers, vec![Some(copy("x")), None]);
        assert_eq!(split.misses, vec![1]);
    }

    #[test]
    fn a_new_generation_drops_every_answer() {
        let mut cache = Cache::new(MAX_BYTES);
        cache.observe(5);
        cache.store(ask("a"), copy("x"));
        cache.store(ask("b"), Found::NotLinkedByProvider);
        assert!(cache.observe(6));
        assert!(cache.is_empty());
        assert_eq!(cache.split(&[ask("a"), ask("b")]).misses, vec![0, 1]);
    }

    #[test]
    fn a_lookup_asked_twice_in_a_batch_is_read_once_and_answered_twice() {
        let cache = Cache::new(MAX_BYTES);
        let batch = [ask("a"), ask("b"), ask("a")];
        let split = cache.split(&batch);
        assert_eq!(split.misses, vec![0, 1]);
        let answers = fill(
            &batch,
            split,
            &[(0, copy("x")), (1, Found::UnknownToRequester)],
        );
        assert_eq!(
            answers,
            vec![copy("x"), Found::UnknownToRequester, copy("x")]
        );
    }

    #[test]
    fn the_bound_is_kept_by_starting_over() {
        let one = entry_bytes(&ask("a"), &copy("x"));
        let mut cache = Cache::new(one * 3);
        cache.observe(1);
        for code in ["a", "b", "c"] {
            cache.store(ask(code), copy("x"));
        }
        assert_eq!(cache.len(), 3);
        cache.store(ask("d"), copy("x"));
        assert_eq!(cache.len(), 1, "full: started over with the newest");
        assert_eq!(cache.split(&[ask("d")]).answers, vec![Some(copy("x"))]);
        // Replacing an entry does not count its bytes twice.
        for _ in 0..10 {
            cache.store(ask("d"), copy("x"));
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes, one);
    }
}
