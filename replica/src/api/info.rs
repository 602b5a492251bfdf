//! The small endpoints: `/v1/models`, `/health` (readiness), `/live` (liveness), `/version`, `/metrics`, `/load` (read by the
//! router), `/tokenize` and `/detokenize`.

use http::{Response, StatusCode};
use serde_json::json;

use super::body::{json, parse_json, text, ApiBody};
use super::error::ApiError;
use super::prompt::{encode, render_chat, ChatInputs};
use super::protocol::{DetokenizeRequest, TokenizeRequest};
use super::{logprobs, AppState};

/// `GET /v1/models`.
pub fn models(st: &AppState) -> Response<ApiBody> {
    let data: Vec<_> = st
        .served_names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": st.started,
                "owned_by": "glmfleet",
                "root": st.model_root,
                "parent": null,
                "max_model_len": st.max_model_len,
            })
        })
        .collect();
    json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /health`: 200 while the engine loop runs and the server is not draining.
pub fn health(st: &AppState) -> Response<ApiBody> {
    let status = if st.engine.is_alive() && !st.is_draining() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "text/plain", "")
}

/// `GET /live`: 200 while the engine loop runs, draining or not (a liveness probe that does not
/// kill a pod in the middle of its drain).
pub fn live(st: &AppState) -> Response<ApiBody> {
    let status = if st.engine.is_alive() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "text/plain", "")
}

/// `GET /version`.
pub fn version() -> Response<ApiBody> {
    json(
        StatusCode::OK,
        &json!({"version": env!("CARGO_PKG_VERSION")}),
    )
}

/// `GET /metrics`: Prometheus text exposition.
pub fn metrics(st: &AppState) -> Response<ApiBody> {
    text(
        StatusCode::OK,
        &st.metrics.content_type(),
        st.metrics.render(),
    )
}

/// `GET /load`: `{"running","waiting","kv_usage","free_blocks","num_blocks"}`.
pub fn load(st: &AppState) -> Response<ApiBody> {
    json(StatusCode::OK, &st.engine.load())
}

/// `POST /tokenize`.
pub async fn tokenize(st: &AppState, body: &[u8]) -> Result<Response<ApiBody>, ApiError> {
    let req: TokenizeRequest = parse_json(body)?;
    st.check_model(req.model.as_deref())?;
    let ids = match (&req.prompt, &req.messages) {
        (Some(p), None) => encode(st, p.clone(), req.add_special_tokens.unwrap_or(true)).await?,
        (None, Some(messages)) => {
            let tools = req.tools.clone().unwrap_or_default();
            let rendered = render_chat(
                st,
                ChatInputs {
                    messages,
                    tools: &tools,
                    add_generation_prompt: req.add_generation_prompt,
                    continue_final_message: req.continue_final_message,
                    kwargs: req.chat_template_kwargs.as_ref(),
                },
            )?;
            encode(st, rendered.text, false).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "exactly one of `prompt` and `messages` must be given",
            ))
        }
    };
    let token_strs = req.return_token_strs.then(|| {
        ids.iter()
            .map(|&id| logprobs::token_text(&st.tokenizer, id))
            .collect::<Vec<_>>()
    });
    Ok(json(
        StatusCode::OK,
        &json!({
            "count": ids.len(),
            "max_model_len": st.max_model_len,
            "tokens": ids,
            "token_strs": token_strs,
        }),
    ))
}

/// `POST /detokenize`.
pub fn detokenize(st: &AppState, body: &[u8]) -> Result<Response<ApiBody>, ApiError> {
    let req: DetokenizeRequest = parse_json(body)?;
    st.check_model(req.model.as_deref())?;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= st.vocab_size) {
        return Err(ApiError::bad(
            "tokens",
            format!("token id {bad} is out of vocabulary"),
        ));
    }
    let prompt = st
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid(format!("cannot detokenize: {e}")))?;
    Ok(json(StatusCode::OK, &json!({ "prompt": prompt })))
}
