//! Holds K idle keep-alive connections open and measures the server's memory
//! with them (the "RSS with 1,000 open connections" figure).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::client::{Conn, Protocol, Target};
use crate::rss::{self, Mem};

/// What holding the connections cost the server.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// A name for the target.
    pub target: String,
    /// Connections asked for.
    pub requested: usize,
    /// Connections that completed TLS and one `GET /v1/whoami`.
    pub opened: usize,
    /// Of those, still open (not closed by the server) at the end of the hold.
    pub still_open: usize,
    /// First failure, if some did not open.
    pub first_error: Option<String>,
    /// Server memory before connecting (summed over its processes).
    pub before: Option<Mem>,
    /// Server memory with every connection open, after the hold.
    pub with: Option<Mem>,
    /// `kakehashi_open_connections` from `/metrics`, if the server has it.
    pub server_counted: Option<u64>,
    /// Held for, seconds.
    pub held_seconds: f64,
}

impl IdleReport {
    /// Extra resident memory per open connection, KiB.
    pub fn per_connection_kib(&self) -> Option<f64> {
        let (b, w) = (self.before?, self.with?);
        (self.opened > 0).then(|| (w.rss_kib as f64 - b.rss_kib as f64) / self.opened as f64)
    }

    /// For people.
    pub fn text(&self) -> String {
        let mib = |m: Option<Mem>| {
            m.map(|m| {
                format!(
                    "RSS {:.1} MiB (VmHWM {:.1} MiB)",
                    m.rss_kib as f64 / 1024.0,
                    m.hwm_kib as f64 / 1024.0
                )
            })
            .unwrap_or_else(|| "unknown".into())
        };
        let mut out = format!(
            "{}: {} of {} idle connections open ({} still open after {:.0} s{})\n  before: {}\n  with:   {}\n",
            self.target,
            self.opened,
            self.requested,
            self.still_open,
            self.held_seconds,
            self.server_counted
                .map(|n| format!(", server counts {n}"))
                .unwrap_or_default(),
            mib(self.before),
            mib(self.with),
        );
        if let Some(per) = self.per_connection_kib() {
            out.push_str(&format!("  per connection: {per:.1} KiB\n"));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("  first error: {e}\n"));
        }
        out
    }
}

async fn open_one(target: Target, tls: TlsConnector, protocol: Protocol) -> Result<Conn> {
    let mut conn = Conn::connect(&target, &tls, protocol).await?;
    // One request so the server has admitted the org and set up its
    // per-connection HTTP state, as for a real terminal between queries.
    let reply = conn.send(Method::GET, "/v1/whoami", Bytes::new()).await?;
    if reply.status != StatusCode::OK {
        anyhow::bail!("GET /v1/whoami: {}", reply.status);
    }
    Ok(conn)
}

fn open_connections_metric(text: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("kakehashi_open_connections"))
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Opens `count` connections (64 handshakes at a time), holds them for
/// `hold`, and reads the server's memory (`pids`) before and with them.
pub async fn hold(
    name: &str,
    target: &Target,
    tls: &TlsConnector,
    protocol: Protocol,
    count: usize,
    hold: Duration,
    pids: Option<&[u32]>,
) -> Result<IdleReport> {
    let before = pids.and_then(|p| rss::mem_sum(p).ok());
    let gate = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for _ in 0..count {
        let (target, tls, gate) = (target.clone(), tls.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            open_one(target, tls, protocol).await
        });
    }
    let mut conns = Vec::with_capacity(count);
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined.context("connect task")? {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let started = tokio::time::Instant::now();
    tokio::time::sleep(hold).await;
    let with = pids.and_then(|p| rss::mem_sum(p).ok());
    let still_open = conns.iter().filter(|c| c.is_open()).count();
    let server_counted = match conns.iter_mut().find(|c| c.is_open()) {
        Some(c) => match c.send(Method::GET, "/metrics", Bytes::new()).await {
            Ok(r) if r.status == StatusCode::OK => {
                open_connections_metric(&String::from_utf8_lossy(&r.body))
            }
            _ => None,
        },
        None => None,
    };
    Ok(IdleReport {
        target: name.to_string(),
        requested: count,
        opened: conns.len(),
        still_open,
        first_error,
        before,
        with,
        server_counted,
        held_seconds: started.elapsed().as_secs_f64(),
    })
}
