//! Changes announced to every node: `NOTIFY kakehashi_changes` with a short
//! text payload, received by each node's `LISTEN`.
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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;
use crate::store::backend::SharedDatabase;
use crate::store::Pools;

/// The channel every announcement goes to.
pub const CHANNEL: &str = "kakehashi_changes";

/// The payload announcing an approved flow-list version.
pub const FLOWS: &str = "flows";

const DECIDED: &str = "decided ";

/// Ids re-broadcast locally after another node announced them, so this
/// node's forwarder does not announce them back (bounded: a lagging
/// forwarder could leave some behind).
type Echoes = Arc<Mutex<HashSet<String>>>;

const MAX_ECHOES: usize = 10_000;

/// Announces `payload` to every node (PostgreSQL; nothing on SQLite, which
/// has one). Failure is logged, not returned: the change itself is
/// committed, and the other nodes' periodic re-read finds it.
pub async fn announce(pools: &Pools, payload: &str) {
    if let Some(shared) = pools.backend().shared() {
        announce_on(shared.as_ref(), payload).await;
    }
}

async fn announce_on(shared: &dyn SharedDatabase, payload: &str) {
    if let Err(e) = shared.announce(CHANNEL, payload).await {
        tracing::warn!(error = %e, "announcing a change to the other nodes failed; they re-read it on their own");
    }
}

/// Starts the listener and the forwarder of local decisions.
pub(super) fn start(
    state: &Arc<AppState>,
    shared: Arc<dyn SharedDatabase>,
    node: String,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let echoes: Echoes = Arc::new(Mutex::new(HashSet::new()));
    vec![
        tokio::spawn(listen(
            Arc::downgrade(state),
            shared.clone(),
            node.clone(),
            echoes.clone(),
            stop.clone(),
        )),
        tokio::spawn(forward_decisions(state, shared, node, echoes, stop)),
    ]
}

/// Announces every decision made on this node (sent on `state.decisions`
/// by the approvals code), except those that came from another node.
fn forward_decisions(
    state: &Arc<AppState>,
    shared: Arc<dyn SharedDatabase>,
    node: String,
    echoes: Echoes,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut decided = state.decisions.subscribe();
    async move {
        loop {
            let id = tokio::select! {
                r = decided.recv() => r,
                _ = stop.changed() => return,
            };
            let id = match id {
                Ok(id) => id,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let echo = echoes.lock().map(|mut e| e.remove(&id)).unwrap_or(false);
            if !echo {
                announce_on(shared.as_ref(), &format!("{DECIDED}{node} {id}")).await;
            }
        }
    }
}

async fn listen(
    state: Weak<AppState>,
    shared: Arc<dyn SharedDatabase>,
    node: String,
    echoes: Echoes,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        // Listening again comes first, then the re-read: an announcement
        // made in between is both heard and read.
        let mut listener = loop {
            match shared.listen(CHANNEL).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for changes from other nodes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        if !first {
            let Some(state) = state.upgrade() else { return };
            tracing::info!("the change listener is listening again; re-reading what was missed");
            catch_up(&state).await;
        }
        first = false;
        loop {
            let received = tokio::select! {
                r = listener.next() => r,
                _ = stop.changed() => return,
            };
            let Some(state) = state.upgrade() else { return };
            match received {
                Ok(Some(payload)) => act(&state, &node, &echoes, &payload).await,
                Ok(None) => {
                    tracing::warn!("the change listener lost its connection; listening again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the change listener failed; listening again");
                    break;
                }
            }
        }
        drop(listener);
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How long the listener waits before connecting again.
const RETRY: Duration = Duration::from_millis(500);

async fn act(state: &AppState, node: &str, echoes: &Echoes, payload: &str) {
    if payload == FLOWS {
        catch_up(state).await;
    } else if let Some(rest) = payload.strip_prefix(DECIDED) {
        let Some((from, id)) = rest.split_once(' ') else {
            return;
        };
        if from == node {
            return;
        }
        if let Ok(mut e) = echoes.lock() {
            if e.len() >= MAX_ECHOES {
                e.clear();
            }
            e.insert(id.to_string());
        }
        let _ = state.decisions.send(id.to_string());
    }
}

/// Re-reads what this node keeps in memory from the database.
async fn catch_up(state: &AppState) {
    match crate::flow_changes::reload_if_changed(state).await {
        Ok(Some(version)) => {
            tracing::info!(
                version,
                "flow list version in force changed on another node; reloaded"
            )
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "re-reading the flow list in force failed; the periodic check retries")
        }
    }
}
