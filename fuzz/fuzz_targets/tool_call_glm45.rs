//! `glm45` tool-call parser: streaming over arbitrary splits == one push == non-streaming, and
//! every call's arguments are a JSON object (see `glmfleet_fuzz::tool_call`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    glmfleet_fuzz::tool_call::check(chat::ToolParserKind::Glm45, data);
});
