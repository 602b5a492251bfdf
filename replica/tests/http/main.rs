//! HTTP tests of every handler through the `App` value (no sockets, except one end-to-end
//! `serve` test), with fake and scripted runners and the byte-level GLM test tokenizer.

mod common;

mod chat;
mod completions;
mod errors;
mod lifecycle;
mod observability;
mod parsers;
