//! Serving the app on a listener, with graceful shutdown.
//!
//! Connections speak HTTP/1.1 or HTTP/2 (auto-detected). On shutdown the router stops accepting,
//! asks every connection to finish its in-flight requests (streams included) and waits up to
//! `shutdown_timeout_secs` for them before returning.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::{App, RouterConfig, RouterError};

/// Time allowed for the first probe round before the listener starts accepting anyway.
const STARTUP_PROBE_GRACE: Duration = Duration::from_millis(500);

/// Serve `cfg` on `listener` until `shutdown` resolves, then drain gracefully.
pub async fn serve(
    cfg: RouterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let app = App::new(cfg)?;
    serve_app(app, listener, shutdown).await
}

/// Like [`serve`], for an app built beforehand (tests, embedding).
pub async fn serve_app(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let cfg = app.config();
    let drain_budget = Duration::from_secs(cfg.shutdown_timeout_secs);
    let startup = Duration::from_millis(cfg.health_timeout_ms) + STARTUP_PROBE_GRACE;
    if tokio::time::timeout(startup, app.ready()).await.is_err() {
        tracing::warn!("first health round did not finish in time; serving anyway");
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, policy = cfg.policy.as_str(), "router listening");
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        budget_s = drain_budget.as_secs(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(drain_budget, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown budget spent; closing remaining connections");
    }
    app.stop_background();
    Ok(())
}
