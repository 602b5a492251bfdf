//! Background upkeep of the fleet: health probes, load polls and discovery.
//!
//! One task runs three loops. Each round probes every member concurrently, each probe bounded by
//! the probe timeout, so a hung replica delays nothing but its own verdict. At start-up the task
//! resolves discovery once and probes once, then flips the `ready` flag the server waits on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::watch;
use tokio::time::{interval, MissedTickBehavior};

use super::{Discovery, Fleet, LoadReport, Replica};
use crate::proxy::HttpClient;

/// Probe responses larger than this are not read.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Timing and sources for the monitor.
#[derive(Clone, Debug)]
pub(crate) struct MonitorSettings {
    pub health_interval: Duration,
    pub probe_timeout: Duration,
    /// `None` disables load polling.
    pub load_interval: Option<Duration>,
    pub discovery: Option<(Discovery, Duration)>,
    pub static_names: Vec<String>,
}

/// Run forever (the app aborts the task when it shuts down).
pub(crate) async fn run(
    fleet: Arc<Fleet>,
    client: HttpClient,
    settings: MonitorSettings,
    ready: watch::Sender<bool>,
) {
    if let Some((discovery, _)) = &settings.discovery {
        discover(&fleet, &client, &settings, discovery).await;
    }
    probe_all(&client, &settings, &fleet.members()).await;
    ready.send_replace(true);
    tokio::join!(
        health_loop(&fleet, &client, &settings),
        load_loop(&fleet, &client, &settings),
        discovery_loop(&fleet, &client, &settings),
    );
}

async fn health_loop(fleet: &Fleet, client: &HttpClient, settings: &MonitorSettings) {
    let mut tick = interval(settings.health_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        probe_all(client, settings, &fleet.members()).await;
    }
}

async fn load_loop(fleet: &Fleet, client: &HttpClient, settings: &MonitorSettings) {
    let Some(period) = settings.load_interval else {
        return;
    };
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members = fleet.members();
        join_all(members.iter().map(|r| poll_load(client, settings, r))).await;
    }
}

async fn discovery_loop(fleet: &Fleet, client: &HttpClient, settings: &MonitorSettings) {
    let Some((discovery, period)) = &settings.discovery else {
        return;
    };
    let mut tick = interval(*period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        discover(fleet, client, settings, discovery).await;
    }
}

async fn discover(fleet: &Fleet, client: &HttpClient, settings: &MonitorSettings, d: &Discovery) {
    match d.resolve().await {
        Ok(found) => {
            let mut names = settings.static_names.clone();
            names.extend(found);
            let added = fleet.set_members(&names);
            probe_all(client, settings, &added).await;
        }
        Err(e) => {
            tracing::warn!(source = %d, error = %e, "discovery failed; keeping the current replicas")
        }
    }
}

async fn probe_all(client: &HttpClient, settings: &MonitorSettings, replicas: &[Arc<Replica>]) {
    join_all(replicas.iter().map(|r| async move {
        if probe_health(client, settings.probe_timeout, r).await {
            r.probe_succeeded();
        } else {
            r.probe_failed();
        }
    }))
    .await;
}

/// `GET /health` answered 200 within the timeout.
async fn probe_health(client: &HttpClient, timeout: Duration, replica: &Replica) -> bool {
    match get(client, timeout, replica, "/health").await {
        Some((status, _)) => status == StatusCode::OK,
        None => false,
    }
}

async fn poll_load(client: &HttpClient, settings: &MonitorSettings, replica: &Arc<Replica>) {
    let timeout = settings.probe_timeout;
    let peak_before_poll = replica.begin_poll();
    let Some((StatusCode::OK, body)) = get(client, timeout, replica, "/load").await else {
        return;
    };
    match serde_json::from_slice::<LoadReport>(&body) {
        Ok(report) => replica.apply_report(report, peak_before_poll),
        Err(e) => tracing::debug!(replica = %replica.name(), error = %e, "unreadable /load report"),
    }
}

/// GET a small document from a replica; `None` on any transport failure or timeout.
async fn get(
    client: &HttpClient,
    timeout: Duration,
    replica: &Replica,
    path: &str,
) -> Option<(StatusCode, Bytes)> {
    let uri = replica.uri(path).ok()?;
    let request = Request::get(uri).body(Full::new(Bytes::new())).ok()?;
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        let body = Limited::new(response.into_body(), PROBE_BODY_LIMIT)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}
