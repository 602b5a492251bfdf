//! One error type for everything the model crate can refuse: bad config, bad checkpoint, bad input.
//! Every variant names the key or tensor at fault so a user can act on the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder not found: {0}")]
    MissingFolder(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config.json: {0}")]
    Config(String),
    #[error("config.json key `{key}`: {message}")]
    ConfigKey { key: String, message: String },
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    #[error("unexpected tensor `{0}` in the checkpoint (not part of Glm4MoeForCausalLM)")]
    Unexpected(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("KV cache: {0}")]
    KvCache(String),
    /// The GPU engine (feature `gpu`): the driver, NVRTC or device memory.
    #[error("GPU: {0}")]
    Device(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn key(key: &str, message: impl Into<String>) -> Self {
        Self::ConfigKey {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
