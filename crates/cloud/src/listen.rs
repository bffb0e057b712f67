//! Accepting connections with limits: how long a client may take to send a
//! request's headers (which also closes keep-alive connections left idle
//! that long), and how many connections are open at once.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so a client that
//! sends half a request, or opens a connection and says nothing, holds it
//! forever, and enough of them exhaust the process's descriptors
//! (slowloris). Here hyper gets a timer and a header-read timeout, and the
//! accept loop takes a permit per connection: at the limit it stops
//! accepting (new clients wait in the kernel's backlog) until a connection
//! ends. Graceful shutdown stops accepting and lets open requests finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connection limits (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must arrive within this; an idle keep-alive
    /// connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Live streams open at once per credential (key or device).
    pub max_streams_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_streams_per_key: 64,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let header_read_timeout = limits.header_read_timeout;
    let (stopping, _) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    tracing::trace!("connection from {peer} accepted");
                    stream
                }
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // taken: wait a moment rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(|req: Request<Incoming>| req.map(Body::new));
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            // The auto builder reads a connection's first bytes (HTTP/1 or
            // HTTP/2?) with no timeout of its own, and hyper's header-read
            // timer starts only after that: a client that connects and
            // sends nothing would hold its slot forever. (Shutdown does
            // not wait for such a client either.)
            let mut first = [0u8; 1];
            let first_bytes = tokio::select! {
                r = tokio::time::timeout(header_read_timeout, stream.peek(&mut first)) => {
                    matches!(r, Ok(Ok(n)) if n > 0)
                }
                _ = stopping.changed() => false,
            };
            if first_bytes {
                let connection = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    )
                    .into_owned();
                if let Err(e) = watcher.watch(connection).await {
                    tracing::trace!("connection ended: {e}");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    graceful.shutdown().await;
}
