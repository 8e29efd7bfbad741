//! The accept loop and each connection's life: hyper's HTTP/1 server (hyper-util's
//! `auto::Builder`, built with HTTP/1 only, as axum's `serve` was) with a header-read timeout, a keep-alive idle timeout, a cap on open
//! connections (a semaphore around `accept`), and a shutdown that closes idle and half-open
//! connections at once while requests in flight finish.
//!
//! What each bound is made of:
//! - header read: hyper's `header_read_timeout`. hyper starts it whenever it waits for a request
//!   head, after each response too, so it also caps idle time.
//! - keep-alive idle: a connection that has answered its requests and receives no new one for
//!   `--keep-alive-timeout-s` is shut down gracefully (hyper closes an idle connection at once).
//!   A connection that never started a request is dropped after the header-read timeout (hyper's
//!   timer does not run while the auto builder is still reading the first bytes).
//! - connections: one semaphore permit per open connection, taken before `accept`: at the cap
//!   new connections wait in the kernel's listen backlog and cost no descriptor here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// The connection bounds (from `medprm serve` flags).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    /// Zero: no keep-alive (every response closes its connection).
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
}

/// What a connection's service tells its watcher: requests started, requests whose response is
/// not yet produced, and when the connection last became idle.
#[derive(Debug, Clone, Copy)]
struct Activity {
    started: u64,
    in_flight: u64,
    idle_since: Instant,
}

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting, lets each
/// connection finish the requests it has in flight (idle and half-open ones close at once) and
/// returns when every connection is closed. The caller bounds that wait (the shutdown deadline).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cap = limits.max_connections.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(cap));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(!limits.keep_alive_timeout.is_zero());
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little instead of spinning, and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, metrics, shutdown) = (builder.clone(), router.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            metrics.open_connections.inc();
            connection(stream, &builder, router, limits, shutdown).await;
            metrics.open_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting for the open connections to finish");
    // Every permit back: every connection closed.
    let _ = slots.acquire_many(cap as u32).await;
}

async fn connection(
    stream: TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = watch::channel(Activity { started: 0, in_flight: 0, idle_since: Instant::now() });
    let tx = Arc::new(tx);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        let router = router.clone();
        async move {
            tx.send_modify(|a| {
                a.started += 1;
                a.in_flight += 1;
            });
            // The response is produced even when the client went away: the guard marks the
            // connection idle whether the future completes or is dropped.
            let _idle = IdleOnDrop(tx.clone());
            let resp: Response = router.oneshot(req.map(Body::new)).await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait_for(|s| *s), if !closing => {
                if rx.borrow().started == 0 {
                    return; // Never began a request (idle, or its head still arriving): nothing to lose.
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle_expired(&mut rx, limits), if !closing => {
                if rx.borrow().started == 0 {
                    tracing::debug!("closing a connection that sent no request in time");
                    return;
                }
                tracing::debug!("closing an idle keep-alive connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

struct IdleOnDrop(Arc<watch::Sender<Activity>>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// Resolves once the connection has had no request in flight for its idle allowance: the
/// keep-alive timeout after a response, the header-read timeout before the first request.
async fn idle_expired(rx: &mut watch::Receiver<Activity>, limits: ConnLimits) {
    loop {
        let a = *rx.borrow_and_update();
        if a.in_flight > 0 {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        let allowance = if a.started == 0 { limits.header_read_timeout } else { limits.keep_alive_timeout };
        let deadline = a.idle_since + allowance;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            r = rx.changed() => {
                if r.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}
