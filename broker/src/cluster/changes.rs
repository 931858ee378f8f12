//! Changes announced to every node: `NOTIFY kakehashi_changes` with a short
//! text payload, received by each node's `LISTEN`
//! (`crate::server::changes` acts on them).
//!
//! - `flows`: a flow-list version was approved (console or host command);
//!   every node re-reads the version in force.
//! - `decided <node> <query id>`: a pending query was approved or rejected
//!   on `<node>`; every other node wakes its requesters long-polling for it.
//!
//! Announcements are sent after the change is committed and are only a
//! hurry-up: every node also re-reads on its own (the flow list every
//! [`crate::flow_changes::RELOAD_INTERVAL`], a long-poll every 5 s), and
//! re-reads the flow list at once after its listening connection came
//! back (a database restart, a network fault: announcements sent meanwhile
//! are not delivered).

use crate::store::backend::SharedDatabase;
use crate::store::Pools;

/// The channel every announcement goes to.
pub const CHANNEL: &str = "kakehashi_changes";

const FLOWS: &str = "flows";
const DECIDED: &str = "decided ";

/// One announcement, as sent and as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// A flow-list version was approved.
    Flows,
    /// A pending query was decided on `node`.
    Decided {
        /// The node that decided it (it wakes its own requesters itself).
        node: String,
        /// The query.
        query_id: String,
    },
}

impl Announcement {
    /// The `NOTIFY` payload.
    pub fn payload(&self) -> String {
        match self {
            Announcement::Flows => FLOWS.to_string(),
            Announcement::Decided { node, query_id } => format!("{DECIDED}{node} {query_id}"),
        }
    }

    /// A received payload; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Announcement> {
        if payload == FLOWS {
            return Some(Announcement::Flows);
        }
        let (node, query_id) = payload.strip_prefix(DECIDED)?.split_once(' ')?;
        Some(Announcement::Decided {
            node: node.to_string(),
            query_id: query_id.to_string(),
        })
    }
}

/// Announces a change to every node (PostgreSQL; nothing on SQLite, which
/// has one). Failure is logged, not returned: the change itself is
/// committed, and the other nodes' periodic re-read finds it.
pub async fn announce(pools: &Pools, change: &Announcement) {
    if let Some(shared) = pools.backend().shared() {
        announce_on(shared.as_ref(), change).await;
    }
}

/// [`announce`] on a shared database already at hand.
pub(crate) async fn announce_on(shared: &dyn SharedDatabase, change: &Announcement) {
    // Bounded: an announcement only hurries the other nodes, which re-read
    // on their own, so it must not hold up the caller (a console request
    // whose change is already committed) on a connection gone silent.
    match tokio::time::timeout(ANNOUNCE_WITHIN, shared.announce(CHANNEL, &change.payload())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "announcing a change to the other nodes failed; they re-read it on their own")
        }
        Err(_) => {
            tracing::warn!("announcing a change to the other nodes took too long; they re-read it on their own")
        }
    }
}

/// How long an announcement may take before it is given up.
const ANNOUNCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::Announcement;

    #[test]
    fn an_announcement_reads_back_as_sent_and_unknown_ones_are_ignored() {
        for change in [
            Announcement::Flows,
            Announcement::Decided {
                node: "127.0.0.1:8443#41.0".into(),
                query_id: "q-1".into(),
            },
        ] {
            assert_eq!(Announcement::parse(&change.payload()), Some(change));
        }
        assert_eq!(Announcement::parse("decided no-query-id"), None);
        assert_eq!(Announcement::parse("flows2"), None);
        assert_eq!(Announcement::parse(""), None);
    }
}
