//! The router's own endpoints: `/health`, `/metrics`, `/replicas`, and `/v1/models` (answered
//! from the replicas, merged).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

use crate::app::Inner;
use crate::error::ApiError;
use crate::fleet::Replica;
use crate::proxy::{ProxyBody, REPLICA_HEADER};

const MODELS_BODY_LIMIT: usize = 4 << 20;

fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 200 while at least one replica is routable, 503 otherwise.
pub(crate) fn health(inner: &Inner) -> Response<ProxyBody> {
    let healthy = inner.fleet.healthy_count();
    let (status, word) = if healthy > 0 {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    json_response(
        status,
        &json!({"status": word, "healthy_replicas": healthy}),
    )
}

/// Prometheus text exposition.
pub(crate) fn metrics(inner: &Inner) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(inner.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The fleet as the router sees it.
pub(crate) fn replicas(inner: &Inner) -> Response<ProxyBody> {
    let now = crate::fleet::now_ms();
    let members = inner.fleet.members();
    let list: Vec<Value> = members
        .iter()
        .map(|r| {
            let report = r.last_report().map(|(report, age_ms)| {
                json!({
                    "running": report.running,
                    "waiting": report.waiting,
                    "kv_usage": report.kv_usage,
                    "free_blocks": report.free_blocks,
                    "num_blocks": report.num_blocks,
                    "age_ms": age_ms,
                })
            });
            json!({
                "name": r.name(),
                "healthy": r.is_healthy(),
                "inflight": r.inflight(),
                "effective_load": r.effective_load(now),
                "external_load": r.external_load(now),
                "saturated": r.is_saturated(now),
                "consecutive_failures": r.consecutive_failures(),
                "ejections": r.ejections(),
                "load_report": report,
            })
        })
        .collect();
    let healthy = members.iter().filter(|r| r.is_healthy()).count();
    json_response(
        StatusCode::OK,
        &json!({
            "policy": inner.policy_name,
            "healthy": healthy,
            "affinity_entries": inner.metrics.affinity_entries.get(),
            "replicas": list,
        }),
    )
}

/// `GET /v1/models`: ask every healthy replica, merge the `data` lists by `id` (first answer's
/// order and envelope). If no replica answers 200, the first answer is passed on as is.
pub(crate) async fn models(inner: &Inner, headers: &HeaderMap) -> Response<ProxyBody> {
    let members = inner.fleet.members();
    let healthy: Vec<_> = members.iter().filter(|r| r.is_healthy()).cloned().collect();
    if healthy.is_empty() {
        return ApiError::NoHealthyReplica.into_response();
    }
    let answers = join_all(healthy.iter().map(|r| fetch_models(inner, headers, r))).await;
    let mut merged: Option<Value> = None;
    let mut served_by: Vec<&str> = Vec::new();
    let mut first_other: Option<(&Replica, StatusCode, Bytes)> = None;
    for (replica, answer) in healthy.iter().zip(answers) {
        let Some((status, body)) = answer else {
            continue;
        };
        let parsed = serde_json::from_slice::<Value>(&body).ok();
        match (status, parsed) {
            (StatusCode::OK, Some(value)) if value.is_object() => {
                served_by.push(replica.name());
                merge_models(&mut merged, value);
            }
            _ => {
                if first_other.is_none() {
                    first_other = Some((replica, status, body));
                }
            }
        }
    }
    if let Some(value) = merged {
        let mut response = json_response(StatusCode::OK, &value);
        if let Ok(v) = HeaderValue::from_str(&served_by.join(", ")) {
            response.headers_mut().insert(REPLICA_HEADER, v);
        }
        return response;
    }
    match first_other {
        Some((replica, status, body)) => {
            let mut response = Response::new(ProxyBody::full(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(replica.name()) {
                response.headers_mut().insert(REPLICA_HEADER, v);
            }
            response
        }
        None => ApiError::Upstream {
            replica: healthy[0].name().to_owned(),
            reason: "no replica answered /v1/models".into(),
        }
        .into_response(),
    }
}

fn merge_models(merged: &mut Option<Value>, value: Value) {
    let Some(base) = merged else {
        *merged = Some(value);
        return;
    };
    let Some(extra) = value.get("data").and_then(Value::as_array) else {
        return;
    };
    let Some(list) = base.get_mut("data").and_then(Value::as_array_mut) else {
        return;
    };
    for model in extra {
        let id = model.get("id");
        if !list.iter().any(|m| m.get("id") == id) {
            list.push(model.clone());
        }
    }
}

async fn fetch_models(
    inner: &Inner,
    headers: &HeaderMap,
    replica: &Replica,
) -> Option<(StatusCode, Bytes)> {
    let uri = replica.uri("/v1/models").ok()?;
    let mut request = Request::get(uri).body(Full::new(Bytes::new())).ok()?;
    crate::proxy::copy_request_headers(headers, request.headers_mut());
    let exchange = async {
        let response = inner.client.request(request).await.ok()?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MODELS_BODY_LIMIT)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, body))
    };
    let timeout = Duration::from_millis(inner.cfg.health_timeout_ms);
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_model_lists_by_id() {
        let mut merged = None;
        merge_models(
            &mut merged,
            json!({"object": "list", "data": [{"id": "glm"}]}),
        );
        merge_models(
            &mut merged,
            json!({"object": "list", "data": [{"id": "glm"}, {"id": "lora"}]}),
        );
        let ids: Vec<_> = merged.unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, vec!["glm", "lora"]);
    }
}
