//! Tool calls (glm45 / glm47 parsers) and reasoning, streaming and not.

use serde_json::{json, Value};

use crate::common::*;
use replica::config::{ReasoningParserName, ToolParserName};

const CALL45: &str = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><|observation|>";

fn tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
        }
    }])
}

fn tool_config(parser: ToolParserName) -> replica::ServeConfig {
    replica::ServeConfig {
        tool_call_parser: Some(parser),
        enable_auto_tool_choice: true,
        // The byte-level test tokenizer spends ~600 tokens on the tools preamble.
        max_model_len: Some(2048),
        ..config()
    }
}

fn ask() -> Value {
    json!({"messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}], "tools": tools(), "temperature": 0})
}

/// Accumulates streamed tool-call deltas the way the OpenAI SDK does.
fn accumulate_calls(events: &[Value]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for e in events {
        for tc in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push(Default::default());
            }
            if let Some(id) = tc["id"].as_str() {
                calls[i].0 = id.into();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                calls[i].1.push_str(n);
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                calls[i].2.push_str(a);
            }
        }
    }
    calls
}

#[tokio::test]
async fn glm45_tool_call_round_trip() {
    let r = start(
        tool_config(ToolParserName::Glm45),
        scripted(&[CALL45, CALL45, "It is sunny."]),
    );
    let app = r.app();
    let v = post(&app, "/v1/chat/completions", ask()).await.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 3}));
    // <|observation|> is a stop id: reported as the stop reason.
    assert_eq!(choice["stop_reason"], 265);
    wait_idle(&r).await;

    // Streaming gives the same call.
    let mut body = ask();
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", body).await.events();
    let calls = accumulate_calls(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "get_weather");
    let streamed: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(streamed, json!({"city": "Paris", "days": 3}));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    wait_idle(&r).await;

    // Second turn: the assistant call and the tool result render and the answer comes back.
    let mut body = ask();
    body["messages"] = json!([
        {"role": "user", "content": "Weather in Paris for 3 days?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 21}"}
    ]);
    let v = post(&app, "/v1/chat/completions", body).await.json();
    assert_eq!(content(&v), "It is sunny.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn glm47_compact_call_and_tool_choice_rules() {
    let call47 = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call><|observation|>";
    let r = start_with(
        tool_config(ToolParserName::Glm47),
        glm47_parts(scripted(&[call47, "no call"])),
    );
    let app = r.app();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let mut body = ask();
    body["tool_choice"] = named.clone();
    let v = post(&app, "/v1/chat/completions", body.clone())
        .await
        .json();
    let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"city": "Rome"})
    );
    wait_idle(&r).await;
    // The model answers without a call although one is required: an error (500), not silence.
    let reply = post(&app, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["param"], "tool_choice");
    wait_idle(&r).await;
    // tool_choice none: no parsing, the raw text is content.
    let mut body = ask();
    body["tool_choice"] = json!("none");
    let v = post(&app, "/v1/chat/completions", body).await.json();
    assert!(content(&v).starts_with("<tool_call>get_weather"));
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn required_tool_missing_in_stream_is_an_error_event() {
    let r = start(
        tool_config(ToolParserName::Glm45),
        scripted(&["Just text."]),
    );
    let mut body = ask();
    body["tool_choice"] = json!("required");
    body["stream"] = json!(true);
    let events = post(&r.app(), "/v1/chat/completions", body).await.events();
    let last = events.last().unwrap();
    assert_eq!(last["error"]["type"], "InternalServerError");
}

fn reasoning_config() -> replica::ServeConfig {
    replica::ServeConfig {
        reasoning_parser: Some(ReasoningParserName::Glm45),
        ..config()
    }
}

fn streamed(events: &[Value], field: &str) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"][field].as_str())
        .collect()
}

#[tokio::test]
async fn glm45_reasoning_split_both_fields() {
    let out = "\n<think>The user greets.</think>\nHello!<|user|>";
    let r = start(reasoning_config(), scripted(&[out, out]));
    let app = r.app();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let v = post(&app, "/v1/chat/completions", body.clone())
        .await
        .json();
    let m = &v["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "The user greets.");
    assert_eq!(m["reasoning"], "The user greets.");
    assert_eq!(m["content"], "\nHello!");
    wait_idle(&r).await;
    let mut body = body;
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", body).await.events();
    assert_eq!(streamed(&events, "reasoning_content"), "The user greets.");
    assert_eq!(streamed(&events, "reasoning"), "The user greets.");
    assert_eq!(streamed(&events, "content"), "\nHello!");
    // One event per generated token even while tags are swallowed.
    let tokens = replica::testing::byte_tokenizer()
        .encode(out, false)
        .unwrap()
        .len();
    assert_eq!(events.len(), 1 + tokens);
}

#[tokio::test]
async fn glm47_prompt_opens_think() {
    let out = "Plan.</think>Answer.<|user|>";
    let r = start_with(
        reasoning_config(),
        glm47_parts(scripted(&[out, "Direct.<|user|>"])),
    );
    let app = r.app();
    let mut body = json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let events = post(&app, "/v1/chat/completions", body.clone())
        .await
        .events();
    assert_eq!(streamed(&events, "reasoning_content"), "Plan.");
    assert_eq!(streamed(&events, "content"), "Answer.");
    wait_idle(&r).await;
    // Thinking disabled: the template closes the block, everything is content.
    body["stream"] = json!(false);
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    let v = post(&app, "/v1/chat/completions", body).await.json();
    assert_eq!(content(&v), "Direct.");
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], Value::Null);
}

#[tokio::test]
async fn reasoning_alias_accepted_on_input() {
    let r = start(reasoning_config(), fake());
    let body = json!({
        "messages": [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "reasoning": "R"},
            {"role": "user", "content": "Q2"}
        ],
        "max_tokens": 1
    });
    assert_eq!(
        post(&r.app(), "/v1/chat/completions", body).await.status,
        200
    );
    let tok = post(
        &r.app(),
        "/tokenize",
        json!({"messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await
    .json();
    assert_eq!(tok["count"], 7);
}
