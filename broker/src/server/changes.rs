//! How a node learns of changes made elsewhere: the announcements of the
//! other nodes ([`crate::cluster::changes`], PostgreSQL), acted on at once,
//! and the periodic re-read of the flow list in force, the fallback for an
//! announcement lost with a connection (and the only way on SQLite, where a
//! host command changes the database beside the running broker).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::changes::{announce_on, Announcement, CHANNEL};
use crate::flow_changes::RELOAD_INTERVAL;
use crate::state::AppState;
use crate::store::backend::SharedDatabase;

/// Ids re-broadcast locally after another node announced them, so this
/// node's forwarder does not announce them back (bounded: a lagging
/// forwarder could leave some behind).
type Echoes = Arc<Mutex<HashSet<String>>>;

const MAX_ECHOES: usize = 10_000;

/// Starts the listener and the forwarder of local decisions.
pub(super) fn start_listening(
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
                let change = Announcement::Decided {
                    node: node.clone(),
                    query_id: id,
                };
                announce_on(shared.as_ref(), &change).await;
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
        // Also the first time: a change made between this node's start-up
        // reads and its first LISTEN is read here.
        {
            let Some(state) = state.upgrade() else { return };
            if !first {
                tracing::info!(
                    "the change listener is listening again; re-reading what was missed"
                );
            }
            catch_up(&state).await;
        }
        first = false;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            let received = tokio::select! {
                r = listener.next() => r,
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(HEARTBEAT, listener.alive()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "the change listener's connection failed its heartbeat; listening again");
                        }
                        Err(_) => {
                            tracing::warn!("the change listener's connection did not answer its heartbeat; listening again");
                        }
                    }
                    break;
                }
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

/// How often the listening connection is asked to answer, and how long it
/// has to: a connection gone silent is replaced (and what it missed
/// re-read) within twice this and [`RETRY`].
const HEARTBEAT: Duration = Duration::from_secs(1);

async fn act(state: &AppState, node: &str, echoes: &Echoes, payload: &str) {
    match Announcement::parse(payload) {
        Some(Announcement::Flows) => catch_up(state).await,
        Some(Announcement::Decided {
            node: from,
            query_id,
        }) => {
            if from == node {
                return;
            }
            if let Ok(mut e) = echoes.lock() {
                if e.len() >= MAX_ECHOES {
                    e.clear();
                }
                e.insert(query_id.clone());
            }
            let _ = state.decisions.send(query_id);
        }
        None => tracing::debug!("an announcement this version does not know; ignored"),
    }
}

/// Re-reads what this node keeps in memory from the database.
async fn catch_up(state: &AppState) {
    match state.reload_flows_if_changed().await {
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

/// Starts the task that keeps this broker on the version in force: every
/// [`RELOAD_INTERVAL`] one `SELECT MAX(version)` of the approved versions,
/// and a reload of the index when it moved (an approval on another broker
/// or from the host CLI). On PostgreSQL approvals are also announced and
/// reloaded at once (`cluster::changes`); this check is the fallback for an
/// announcement lost with a connection. Stops with the broker.
pub(super) fn spawn_flow_reloader(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Logged once per outage, not every tick.
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            if state.is_shutting_down() {
                break;
            }
            match state.reload_flows_if_changed().await {
                Ok(changed) => {
                    if let Some(version) = changed {
                        tracing::info!(version, "flow list version in force changed; reloaded");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "checking the flow list in force failed; the loaded version stays until it succeeds");
                    }
                    failing = true;
                }
            }
        }
    });
}
