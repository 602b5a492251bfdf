//! Every error code, in OpenAI's error shape.

use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;

use crate::common::*;

fn assert_error(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["error"]["type"], kind);
    assert_eq!(v["error"]["code"], status);
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["error"].as_object().unwrap().contains_key("param"));
}

#[tokio::test]
async fn bad_requests_are_400() {
    let r = start(config(), fake());
    let app = r.app();
    let malformed = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .body(Full::new(bytes::Bytes::from_static(b"{\"messages\": [")))
        .unwrap();
    let reply = send(&app, malformed).await;
    assert_error(&reply, 400, "BadRequestError");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        json!({"messages": msgs, "temperature": "hot"}),
        json!({"messages": msgs, "temperature": -1}),
        json!({"messages": msgs, "top_p": 0}),
        json!({"messages": msgs, "n": 0}),
        json!({"messages": msgs, "max_tokens": 600}),
        json!({"messages": msgs, "max_tokens": 0}),
        json!({"messages": msgs, "stop": [""]}),
        json!({"messages": msgs, "top_logprobs": 3}),
        json!({"messages": msgs, "logprobs": true, "top_logprobs": 50}),
        json!({"messages": msgs, "min_tokens": 10, "max_tokens": 5}),
        json!({"messages": msgs, "logit_bias": {"abc": 1}}),
        json!({"messages": msgs, "response_format": {"type": "json_schema"}}),
        json!({"messages": "hi"}),
        json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}]}),
        json!({"messages": msgs, "continue_final_message": true, "add_generation_prompt": true}),
        json!({"messages": msgs, "stream_options": {"include_usage": true}}),
    ];
    for body in cases {
        let reply = post(&app, "/v1/chat/completions", body.clone()).await;
        assert_error(&reply, 400, "BadRequestError");
    }
    let long = "y".repeat(600);
    let reply = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_error(&reply, 400, "BadRequestError");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 512"));
    for body in [
        json!({"prompt": "x", "suffix": "y"}),
        json!({"prompt": ""}),
        json!({"prompt": [999_999]}),
        json!({"prompt": "x", "best_of": 3}),
        json!({}),
    ] {
        assert_error(
            &post(&app, "/v1/completions", body).await,
            400,
            "BadRequestError",
        );
    }
    assert_eq!(reply.headers["x-should-retry"], "false");
}

#[tokio::test]
async fn auth_401_only_on_api_routes() {
    let cfg = replica::ServeConfig {
        api_key: Some("sk-test".into()),
        ..config()
    };
    let r = start(cfg, fake());
    let app = r.app();
    let body = json!({"prompt": "x", "max_tokens": 1});
    assert_error(
        &post(&app, "/v1/completions", body.clone()).await,
        401,
        "AuthenticationError",
    );
    let mut req = request(Method::POST, "/v1/completions", Some(&body));
    req.headers_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_error(&send(&app, req).await, 401, "AuthenticationError");
    let mut req = request(Method::POST, "/v1/completions", Some(&body));
    req.headers_mut()
        .insert("authorization", "Bearer sk-test".parse().unwrap());
    assert_eq!(send(&app, req).await.status, 200);
    assert_error(&get(&app, "/v1/models").await, 401, "AuthenticationError");
    for path in ["/health", "/metrics", "/version", "/load"] {
        assert_eq!(get(&app, path).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn unknown_model_route_method_404_405() {
    let r = start(config(), fake());
    let app = r.app();
    let reply = post(
        &app,
        "/v1/completions",
        json!({"model": "gpt-4", "prompt": "x"}),
    )
    .await;
    assert_error(&reply, 404, "NotFoundError");
    assert_eq!(reply.json()["error"]["param"], "model");
    assert_error(&get(&app, "/v1/nope").await, 404, "NotFoundError");
    assert_error(
        &get(&app, "/v1/chat/completions").await,
        405,
        "MethodNotAllowedError",
    );
}

#[tokio::test]
async fn body_too_large_is_413() {
    let cfg = replica::ServeConfig {
        max_request_body_bytes: 2048,
        ..config()
    };
    let r = start(cfg, fake());
    let body = json!({"prompt": "z".repeat(4096)});
    assert_error(
        &post(&r.app(), "/v1/completions", body).await,
        413,
        "PayloadTooLargeError",
    );
}

#[tokio::test]
async fn overload_is_503_with_retry_after() {
    let cfg = replica::ServeConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: 64,
        max_waiting_requests: 0,
        ..config()
    };
    let r = start(cfg, slow_fake(std::time::Duration::from_millis(5)));
    let app = r.app();
    let long = json!({"prompt": "a", "max_tokens": 200, "ignore_eos": true, "stream": true});
    let resp = app
        .handle(request(Method::POST, "/v1/completions", Some(&long)))
        .await;
    assert_eq!(resp.status(), 200);
    let reply = post(
        &app,
        "/v1/completions",
        json!({"prompt": "b", "max_tokens": 1}),
    )
    .await;
    assert_error(&reply, 503, "ServiceUnavailableError");
    assert_eq!(reply.headers["retry-after"], "1");
    drop(resp);
    wait_idle(&r).await;
    assert_eq!(
        post(
            &app,
            "/v1/completions",
            json!({"prompt": "b", "max_tokens": 1})
        )
        .await
        .status,
        200
    );
}
