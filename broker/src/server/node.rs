//! This node's part in a cluster ([`crate::cluster`]): it takes the roles
//! it can, listens for the other nodes' changes, keeps its share of each
//! org's rate limit, and runs the background work of the roles it holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{Role, Roles};
use crate::state::AppState;

/// This node's part in the cluster: its roles and its change listener.
pub struct Node {
    roles: Arc<Roles>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Joins the cluster of `state`'s database: starts taking roles and
    /// listening for changes (PostgreSQL), or holds every role (SQLite).
    /// The record log's checkpoints and purge follow the roles from now on.
    pub fn start(state: &Arc<AppState>) -> Node {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let shared = state.store.pools().backend().shared();
        let roles = match shared {
            Some(shared) => {
                let name = node_name(state);
                let roles = Arc::new(Roles::contested(name.clone()));
                tasks.push(tokio::spawn(crate::cluster::lease::hold(
                    shared.clone(),
                    roles.clone(),
                    stopped.clone(),
                )));
                tasks.extend(super::changes::start_listening(
                    state, shared, name, stopped,
                ));
                roles
            }
            None => Arc::new(Roles::single_node()),
        };
        roles.report_to(state.metrics.roles());
        state.records.follow_roles(roles.clone());
        tasks.push(share_limits(state, roles.clone(), stop.subscribe()));
        Node { roles, stop, tasks }
    }

    /// The roles this node holds now.
    pub fn roles(&self) -> &Arc<Roles> {
        &self.roles
    }

    /// Leaves the cluster: releases the roles at once (another node takes
    /// them at its next attempt) and stops listening. Called after the
    /// record log closed, so the sealer's final checkpoint is signed first.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Keeps each org's rate limit this node's share of the nodes alive
/// ([`crate::edge::limits::node_share`]), re-read every round of the role
/// lease: the per-org limit holds across the cluster, not N times over.
fn share_limits(
    state: &Arc<AppState>,
    roles: Arc<Roles>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let limits = state.limits.clone();
    tokio::spawn(async move {
        let every = Duration::from_millis(crate::cluster::lease::ATTEMPT_EVERY_MS);
        loop {
            limits.share_among(roles.nodes());
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// This node's name in logs and announcements: its exchange address,
/// process id, a counter (several brokers may run in one process, as in
/// tests, all configured with port 0) and a random tag: nodes in containers
/// share the address (`0.0.0.0:7443`) and often the process id (1), and a
/// node ignores announcements bearing its own name.
fn node_name(state: &AppState) -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}#{}.{n}.{:08x}",
        state.config.listen.address,
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Runs `work` every `every` (after one period) while this node holds
/// `role`, until `stop` changes or `state` is gone.
pub fn spawn_role_task<F, Fut>(
    state: &Arc<AppState>,
    roles: Arc<Roles>,
    role: Role,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    work: F,
) where
    F: Fn(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(state) = weak.upgrade() else { return };
            if state.is_shutting_down() {
                return;
            }
            if roles.holds(role) {
                work(state).await;
            }
        }
    });
}
