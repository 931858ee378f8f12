//! A TCP proxy that can pause: while paused it forwards nothing either way
//! and closes nothing (bytes wait in the socket buffers, a closed side is
//! passed on only after the pause), as a network that stops delivering
//! without resetting connections does.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running proxy to one upstream address; stops (and drops every
/// connection) on drop.
pub struct PauseProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    paused: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PauseProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<PauseProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (paused, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Owned here, so aborting the proxy drops every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let watching = watching.clone();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, watching.clone()), pipe(sr, cw, watching));
                });
                // Reap finished connections without waiting.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(PauseProxy { addr, paused, task })
    }

    /// Stops forwarding both ways, keeping every connection open.
    pub fn pause(&self) {
        let _ = self.paused.send(true);
    }

    /// Forwards again what waited and what comes.
    pub fn resume(&self) {
        let _ = self.paused.send(false);
    }
}

impl Drop for PauseProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = from.read(&mut buf).await.unwrap_or(0);
        // What was read during a pause (data or the end) waits for its end.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
