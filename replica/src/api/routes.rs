//! Dispatch by method and path, in this order: auth (protected paths) → drain gate (generation
//! endpoints) → body read with the size limit and read deadline → handler. Every error goes through
//! [`ApiError::into_response`].

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Body;

use super::body::{read_limited, ApiBody};
use super::error::ApiError;
use super::{auth, chat, completions, info, AppState};

/// Answers one request.
pub async fn route<B>(st: &Arc<AppState>, req: Request<B>) -> Response<ApiBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match dispatch(st, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch<B>(st: &Arc<AppState>, req: Request<B>) -> Result<Response<ApiBody>, ApiError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    if auth::is_protected(&path) {
        auth::check(req.headers(), st.api_key.as_deref())?;
    }
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") | (Method::GET, "/ping") => Ok(info::health(st)),
        (Method::GET, "/live") => Ok(info::live(st)),
        (Method::GET, "/version") => Ok(info::version()),
        (Method::GET, "/metrics") => Ok(info::metrics(st)),
        (Method::GET, "/load") => Ok(info::load(st)),
        (Method::GET, "/v1/models") => Ok(info::models(st)),
        (Method::POST, "/v1/chat/completions") => {
            gate(st)?;
            let body = read_limited(req.into_body(), st.max_body_bytes, st.body_timeout).await?;
            chat::chat_completions(st.clone(), body).await
        }
        (Method::POST, "/v1/completions") => {
            gate(st)?;
            let body = read_limited(req.into_body(), st.max_body_bytes, st.body_timeout).await?;
            completions::completions(st.clone(), body).await
        }
        (Method::POST, "/tokenize") => {
            let body = read_limited(req.into_body(), st.max_body_bytes, st.body_timeout).await?;
            info::tokenize(st, &body).await
        }
        (Method::POST, "/detokenize") => {
            let body = read_limited(req.into_body(), st.max_body_bytes, st.body_timeout).await?;
            info::detokenize(st, &body)
        }
        (
            _,
            "/health"
            | "/ping"
            | "/version"
            | "/metrics"
            | "/load"
            | "/v1/models"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/tokenize"
            | "/detokenize",
        ) => Err(ApiError::MethodNotAllowed),
        (_, other) => Err(ApiError::RouteNotFound(other.to_owned())),
    }
}

/// New generation work is refused while draining or when the engine is gone.
fn gate(st: &AppState) -> Result<(), ApiError> {
    if st.is_draining() {
        return Err(ApiError::Draining);
    }
    if !st.engine.is_alive() {
        return Err(ApiError::EngineDown);
    }
    Ok(())
}
