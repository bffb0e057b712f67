//! Accepting connections with limits: how long a client may take to send a
//! request's headers (which also closes keep-alive connections left idle
//! that long), how long it may take to send a request's body, and how many
//! connections are open at once.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so a client that
//! sends half a request, or opens a connection and says nothing, holds it
//! forever, and enough of them exhaust the process's descriptors
//! (slowloris). Here hyper gets a timer and a header-read timeout, and the
//! accept loop takes a permit per connection: at the limit it stops
//! accepting (new clients wait in the kernel's backlog) until a connection
//! ends. Graceful shutdown stops accepting and lets open requests finish.
//!
//! A body is read against a deadline from the end of its headers: a client
//! that sends its headers and then trickles the body a byte at a time gets
//! 408 `RequestTimeout` and the connection is closed.
//!
//! Only HTTP/1.1 is served. hyper's HTTP/2 server has no header-read or
//! idle timer, so an h2c client that sent its preface and went quiet would
//! hold its slot for good; every client galaxy-cloud serves (the Durable
//! Functions and Event Grid client libraries, the desktop app, browsers on
//! plain HTTP) speaks HTTP/1.1.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::AppError;

/// Connection limits (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must arrive within this; an idle keep-alive
    /// connection is closed after it too.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this, counted from the end of
    /// its headers.
    pub body_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Live streams open at once per credential (key or device).
    pub max_streams_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
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
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let body_read_timeout = limits.body_read_timeout;
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
        let app = app.clone();
        let service = tower::service_fn(move |req: Request<Incoming>| {
            within_deadline(app.clone(), req, body_read_timeout)
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            // hyper's header-read timer starts only with a connection's
            // first bytes: a client that connects and sends nothing would
            // hold its slot forever. (Shutdown does not wait for such a
            // client either.)
            let mut first = [0u8; 1];
            let first_bytes = tokio::select! {
                r = tokio::time::timeout(header_read_timeout, stream.peek(&mut first)) => {
                    matches!(r, Ok(Ok(n)) if n > 0)
                }
                _ = stopping.changed() => false,
            };
            if first_bytes {
                let connection = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                if let Err(e) = watcher.watch(connection).await {
                    tracing::trace!("connection ended: {e}");
                }
            } else {
                // Closed before its slot is given back, so a client let in
                // by that slot never finds the stalled one still open.
                drop(stream);
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    graceful.shutdown().await;
}

/// Runs `req` through `app` with its body read against `timeout`; a body
/// that missed it makes the answer 408 and closes the connection.
async fn within_deadline(
    app: Router,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Response, std::convert::Infallible> {
    let late = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Instant::now() + timeout,
            timer: None,
            late: late.clone(),
        })
    });
    let mut response = app.oneshot(req).await?;
    if !late.load(Ordering::Relaxed) {
        return Ok(response);
    }
    // JSON bodies already answer 408 (`JsonBody`); any other reader's
    // rejection is replaced by it.
    if response.status() != axum::http::StatusCode::REQUEST_TIMEOUT {
        response = BodyTooSlow::error().into_response();
    }
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    Ok(response)
}

/// A request body that fails once its deadline passes. The timer is made
/// on the first poll that waits, so bodiless requests cost none.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
}

/// The error a late body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTooSlow;

impl BodyTooSlow {
    /// The answer to a request whose body came too late.
    pub(crate) fn error() -> AppError {
        AppError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            "the request body did not arrive within --body-read-timeout",
        )
    }

    /// Whether `error` (or what caused it) is a late body's.
    pub(crate) fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<Self>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            this.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
