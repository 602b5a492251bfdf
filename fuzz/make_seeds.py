#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/<name>, a handful of small realistic
inputs per target in the byte layout each target documents (flags/seed bytes, then the payload).

Run from anywhere: `python3 fuzz/make_seeds.py`. Deterministic; re-running rewrites the same files.
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def hdr(flags, seed):
    return bytes([flags, seed])


# ---- tool calls -------------------------------------------------------------------------------
G45 = {
    "basic": (1, "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"),
    "two_calls_mixed": (2, "<tool_call>get\n<arg_key>key</arg_key>\n<arg_value> a b </arg_value>\n</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>null</arg_value>\n<arg_key>flags</arg_key>\n<arg_value>['x', 1, True]</arg_value>\n<arg_key>opts</arg_key>\n<arg_value>{\"a\": None}</arg_value>\n<arg_key>ok</arg_key>\n<arg_value>false</arg_value>\n</tool_call>"),
    "fused_name": (2, "<tool_call>get_weathercity</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>"),
    "unterminated": (1, "ok <tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par"),
    "plain": (0, "Hello! No tools needed here. <b>bold</b> & <tool_ not a tag"),
    "zero_args_literal_newline": (3, "<tool_call>bare\\n</tool_call> done"),
    "unicode": (1, "Voilà\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Zürich 東京 \"q\"\\</arg_value>\n</tool_call>"),
}
for name, (flags, text) in G45.items():
    put("tool_call_glm45", name, hdr(flags | 0x14, 7) + text.encode())
put("tool_call_glm45", "custom_tools",
    hdr(0x80 | 0x0C, 3) + json.dumps([{"type": "function", "function": {"name": "f", "parameters": {"properties": {"x": {"type": "integer"}, "y": {"type": ["string", "null"]}}}}}]).encode()
    + b"\x00<tool_call>f\n<arg_key>x</arg_key>\n<arg_value>12</arg_value>\n<arg_key>y</arg_key>\n<arg_value>None</arg_value>\n</tool_call>")

G47 = {
    "basic": (1, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"),
    "two_calls": (2, "Sure.<tool_call>get<arg_key>key</arg_key><arg_value>k</arg_value></tool_call><tool_call>get_weather<arg_key>when</arg_key><arg_value>7</arg_value><arg_key>ratio</arg_key><arg_value>0.5</arg_value></tool_call>"),
    "new_call_closes": (1, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>A</arg_value><tool_call>get_weather</tool_call>"),
    "duplicate_key": (1, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>A</arg_value><arg_key>city</arg_key><arg_value>B</arg_value></tool_call>"),
    "plain": (0, "just text, with a stray </arg_value> and </tool_call>"),
    "unterminated": (2, "<tool_call>get<arg_key>key</arg_key><arg_value>v"),
}
for name, (flags, text) in G47.items():
    put("tool_call_glm47", name, hdr(flags | 0x10, 11) + text.encode())

# ---- reasoning --------------------------------------------------------------------------------
R = {
    "glm45_think": (2, "\n<think>The user greets me.</think>\nHello!"),
    "glm47_open": (3, "Let me think about it.</think>The answer is 4."),
    "tool_in_reasoning": (3, "need a tool<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"),
    "disabled": (0, "<think>not special</think>content"),
    "no_think": (2, "  plain answer </think> later"),
    "truncated": (1, "<think>still thinking at the end"),
}
for name, (flags, text) in R.items():
    put("reasoning", name, hdr(flags | 0x0C, 5) + text.encode())

# ---- SSE --------------------------------------------------------------------------------------
completions = (
    'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"He","finish_reason":null}]}\n\n'
    'data: {"id":"cmpl-1","choices":[{"index":0,"text":"llo","finish_reason":"length"}]}\n\n'
    'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    "data: [DONE]\n\n"
)
chat = (
    ': keep-alive\n\n'
    'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"content":"Hé ✓"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_x","type":"function","function":{"name":"f","arguments":"{"}}]}}]}\n\n'
    "data: [DONE]\n\n"
)
crlf = completions.replace("\n", "\r\n")
error = 'data: {"choices":[{"text":"a"}]}\n\ndata: {"error":{"message":"replica failed","code":502}}\n\n'
multi = "event: message\nid: 1\ndata: {\"choices\":\ndata: [{\"text\":\"x\"}]}\nretry: 10\n\n"
for target, flags in (("sse_bench", 0x05), ("sse_router", 0x07)):
    put(target, "completions", hdr(flags, 1) + completions.encode())
    put(target, "chat", hdr(flags | 0x80, 2) + chat.encode())
    put(target, "crlf", hdr(flags, 3) + crlf.encode())
    put(target, "error_event", hdr(flags, 4) + error.encode())
    put(target, "multiline", hdr(flags, 5) + multi.encode())
    put(target, "unterminated", hdr(1, 6) + b'data: {"choices":[{"text":"cut')

# ---- router request bodies ----------------------------------------------------------------------
bodies = {
    "chat": {"model": "demo", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}], "max_tokens": 16},
    "chat_parts_tools": {"model": "demo", "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                                      {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                                      {"role": "tool", "content": "sunny", "name": "get_weather"}]},
    "completion_text": {"model": "demo", "prompt": "Once upon a time " * 20},
    "completion_ids": {"prompt": [1, 2, 3, 4, 5, 4294967295]},
    "completion_batch": {"prompt": [[1, 2], [3]]},
}
for i, (name, body) in enumerate(bodies.items()):
    put("routing_key", name, hdr(4 + i, 16) + json.dumps(body).encode())
put("routing_key", "not_json", hdr(3, 8) + b"\xff\xfe{\"messages\": [")

# ---- chat templates (JSON mode, flag bit 3) ---------------------------------------------------
conv = {
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Call the tool.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}],
    "chat_template_kwargs": {"enable_thinking": True},
}
simple = {"messages": [{"role": "user", "content": "Hello"}]}
nothink = {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": False, "clear_thinking": False}}
prefill = {"messages": [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2, "}]}
for flags, name, body in ((8 | 4, "glm45_tools", conv), (8 | 4 | 1, "glm47_tools", conv), (8 | 4, "glm45_simple", simple),
                          (8 | 4 | 1, "glm47_nothink", nothink), (8 | 2 | 1, "glm47_continue", prefill), (8 | 2, "glm45_continue", prefill)):
    put("chat_template", name, bytes([flags]) + json.dumps(body, ensure_ascii=False).encode())
put("chat_template", "structured_bytes", bytes([5]) + bytes(range(0, 256, 3)) + b"hello<|user|>")

# ---- replica request bodies (selector: 0 chat, 1 completions, 2 tokenize, 3 detokenize) ------
msgs = [{"role": "user", "content": "Hello there"}]
reqs = [
    (0, "chat", {"model": "glm-fuzz", "messages": msgs, "max_tokens": 8}),
    (0, "chat_stream_usage", {"messages": msgs, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7, "seed": 3}),
    (0, "chat_tools_auto", {"messages": msgs, "max_tokens": 8, "tools": bodies["chat_parts_tools"]["tools"], "tool_choice": "auto", "logprobs": True, "top_logprobs": 2}),
    (0, "chat_tools_required_stream", {"messages": msgs, "max_tokens": 4, "stream": True, "tools": bodies["chat_parts_tools"]["tools"], "tool_choice": "required"}),
    (0, "chat_n_stop", {"messages": msgs, "max_tokens": 8, "n": 2, "stop": ["a", "b"], "chat_template_kwargs": {"enable_thinking": False}}),
    (1, "completion", {"prompt": "Once upon", "max_tokens": 5, "logprobs": 2, "echo": True}),
    (1, "completion_ids_stream", {"prompt": [[72, 105], [33]], "max_tokens": 3, "stream": True, "n": 2}),
    (2, "tokenize_messages", {"messages": msgs, "add_generation_prompt": True, "return_token_strs": True}),
    (2, "tokenize_prompt", {"prompt": "héllo <think>", "add_special_tokens": False}),
    (3, "detokenize", {"tokens": [72, 105, 277, 278]}),
    # regression: max_tokens near usize::MAX overflowed the context-length message
    (0, "chat_max_tokens_u64_max", {"messages": msgs, "max_tokens": 18446744073709551615}),
    (1, "completion_huge_numbers", {"prompt": "x", "max_tokens": 18446744073709551615, "n": 18446744073709551615, "logprobs": 18446744073709551615, "seed": -9223372036854775808}),
]
for sel, name, body in reqs:
    put("replica_request", name, bytes([sel]) + json.dumps(body, ensure_ascii=False).encode())

# ---- config.json ------------------------------------------------------------------------------
for src, name in (("tests/fixtures/tiny-a/config.json", "tiny_a"), ("tests/fixtures/tiny-b-fp8/config.json", "tiny_b_fp8"),
                  ("tests/fixtures/tiny-b-fp8-block/config.json", "tiny_b_fp8_block"), ("model/demo/config.json", "demo")):
    with open(os.path.join(REPO, src), "rb") as f:
        put("model_config", name, f.read())
put("model_config", "rope_parameters", json.dumps({"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5},
    "eos_token_id": [1, 2], "dtype": "bfloat16"}))

# regression: dimensions whose products overflow (serve panicked sizing the weights)
put("model_config", "huge_dimensions", json.dumps({"architectures": ["Glm4MoeForCausalLM"], "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2**40,
    "num_key_value_heads": 2**40, "head_dim": 2**40, "n_routed_experts": 4, "num_experts_per_tok": 2}))

# ---- safetensors (mode: 0 raw file, 1 HEADER\0DATA framed, 2 INDEX\0SHARD) -------------------
def st_file(tensors, meta=True):
    header, data = {}, b""
    if meta:
        header["__metadata__"] = {"format": "pt"}
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    h = json.dumps(header).encode()
    return h, data

h, d = st_file([("w", "F32", [2], struct.pack("<2f", 1.5, -2.0)), ("b", "BF16", [2, 1], b"\x80\x3f\x00\x40"), ("q", "F8_E4M3", [3], b"\x38\x40\xb8")])
put("safetensors", "raw_three_dtypes", bytes([0]) + struct.pack("<Q", len(h)) + h + d)
put("safetensors", "framed_three_dtypes", bytes([1]) + h + b"\x00" + d)
h2, d2 = st_file([("e", "I64", [1], b"\x01" * 8), ("z", "F16", [0], b"")], meta=False)
put("safetensors", "framed_int_empty", bytes([1]) + h2 + b"\x00" + d2)
idx = json.dumps({"metadata": {"total_size": len(d)}, "weight_map": {"w": "model.safetensors", "b": "model.safetensors", "q": "model.safetensors"}}).encode()
put("safetensors", "index_single_shard", bytes([2]) + idx + b"\x00" + struct.pack("<Q", len(h)) + h + d)
bad_idx = json.dumps({"weight_map": {"w": "../outside.safetensors"}}).encode()
put("safetensors", "index_escape", bytes([2]) + bad_idx + b"\x00")
put("safetensors", "huge_header_len", bytes([0]) + struct.pack("<Q", 2**63) + b"{}")
print("seeds written under", os.path.join(ROOT, "corpus"))
