//! Chat templates built into glmfleet, for checkpoints that ship none.
//!
//! Both are the project's own Jinja text (in `src/templates/`), written from the format
//! description and verified byte-for-byte against the publisher's GLM-4.6 template (GLM45) and
//! the documented GLM-4.7 test vectors (GLM47). They render identically under Python Jinja2
//! with transformers' settings and under [`crate::ChatTemplate`].

/// GLM-4.5 / GLM-4.5-Air / GLM-4.6 format: newline after role tokens, model writes `<think>`
/// itself, `/nothink` appended to user turns when `enable_thinking` is false.
pub const GLM45: &str = include_str!("templates/glm45.jinja");

/// GLM-4.7 format: compact tool-call tags, generation prompt ends with `<think>` (or `</think>`
/// when `enable_thinking` is false), `clear_thinking=false` keeps all past reasoning.
///
/// Tool messages whose content is a list render one `<tool_response>` per item, using the
/// item's `output`, else the `text` of a text part, else the item itself — a glmfleet choice,
/// as the publisher's GLM-4.7 file could not be consulted.
pub const GLM47: &str = include_str!("templates/glm47.jinja");
