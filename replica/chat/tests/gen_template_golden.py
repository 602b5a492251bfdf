#!/usr/bin/env python3
"""Generate chat-template golden files with Python Jinja2 configured like transformers.

Renders a corpus of conversations with
  * the publisher's GLM-4.6 template (shared/data/chat_templates/glm-4.6.jinja) -> golden/glm46_publisher.json
  * glmfleet's built-in GLM-4.7 template (src/templates/glm47.jinja)             -> golden/glm47_builtin.json
and checks that glmfleet's built-in GLM-4.5 template renders every case exactly like the
publisher's file. The Rust tests (tests/template_golden.rs) compare the crate's minijinja
renderer against these files, so CI needs no Python.

Messages are normalised the way `chat::normalize_messages` does before rendering: null content
becomes "" and OpenAI tool-call `arguments` given as JSON strings are parsed into mappings.

Usage: python3 replica/chat/tests/gen_template_golden.py [--publisher PATH]
"""

import argparse
import copy
import json
import pathlib
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = pathlib.Path(__file__).resolve().parent
CRATE = HERE.parent
REPO = CRATE.parent.parent
DEFAULT_PUBLISHER = REPO.parent / "shared" / "data" / "chat_templates" / "glm-4.6.jinja"


def hf_environment():
    """The Jinja2 environment transformers' `_compile_jinja_template` builds."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def normalise(messages):
    out = []
    for m in copy.deepcopy(messages):
        if "content" in m and m["content"] is None:
            m["content"] = ""
        if m.get("tool_calls", "absent") is None:
            del m["tool_calls"]
        for tc in m.get("tool_calls") or []:
            fn = tc["function"] if isinstance(tc.get("function"), dict) else tc
            args = fn.get("arguments")
            if isinstance(args, str):
                fn["arguments"] = json.loads(args) if args.strip() else {}
        out.append(m)
    return out


def render(template, case):
    messages = normalise(case["messages"])
    kwargs = dict(case.get("kwargs", {}))
    cont = case.get("continue_final_message", False)
    text = template.render(
        messages=messages,
        tools=case.get("tools"),
        add_generation_prompt=case.get("add_generation_prompt", False) and not cont,
        **kwargs,
    )
    if cont:
        # transformers' apply_chat_template(continue_final_message=True)
        final = messages[-1]["content"]
        if isinstance(final, (list, tuple)):
            final = [p["text"] for p in final if "text" in p][-1]
        loc = text.rindex(final.strip())
        if text[loc : loc + len(final.lstrip())] == final:
            text = text[: loc + len(final.lstrip())]
        else:
            text = text[: loc + len(final.strip())]
    return text


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}

SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "搜索网页 — search the web for «anything» & return <results>",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "查询"},
                "top_k": {"type": "integer", "default": 5},
                "filters": {
                    "type": "object",
                    "properties": {"site": {"type": "string"}, "fresh": {"type": "boolean"}},
                },
                "lang": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["query"],
        },
    },
}

WRITE_FILE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": "Write a file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}

NOW = {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}


def call(name, args, call_id="call_1", as_string=True, wrapped=True):
    a = json.dumps(args, ensure_ascii=False) if as_string else args
    if wrapped:
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": a}}
    return {"name": name, "arguments": a}


CASES = [
    {"name": "A_user_hi", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": True},
    {
        "name": "B_system_nothink",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": False},
    },
    {
        "name": "C_tools_loop",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris for 3 days?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Need the tool.",
                "tool_calls": [call("get_weather", {"city": "Paris", "days": 3})],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 19}'},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "D_history_reasoning_dropped",
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "multi_turn_system_and_history",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "  4  \n"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
            {"role": "user", "content": "Thanks!"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "two_tools_unicode_schema_no_assistant_yet",
        "tools": [SEARCH, WEATHER],
        "messages": [{"role": "user", "content": "查一下北京的天气 🌤️"}],
        "add_generation_prompt": True,
    },
    {
        "name": "tool_loop_then_answer_then_new_question",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "reasoning_content": "Two cities, two calls.",
                "tool_calls": [
                    call("get_weather", {"city": "Oslo"}, "call_a"),
                    call("get_weather", {"city": "Rome", "days": 1}, "call_b"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "-3°C, snow"},
            {"role": "tool", "tool_call_id": "call_b", "content": "18°C, sun"},
            {"role": "assistant", "content": "Oslo: -3°C and snowing; Rome: 18°C and sunny.", "reasoning_content": "Summarise."},
            {"role": "user", "content": "And tomorrow in Rome?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "Call again with days=2.",
                "tool_calls": [call("get_weather", {"city": "Rome", "days": 2}, "call_c")],
            },
            {"role": "tool", "tool_call_id": "call_c", "content": "20°C"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "tool_list_content",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Lima"})]},
            {"role": "tool", "tool_call_id": "call_1", "content": ["sunny", {"output": "22°C"}]},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "wind 5 km/h"}]},
            {"role": "tool", "tool_call_id": "call_3", "content": "humid"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "inline_think_in_current_loop",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Kyiv?"},
            {
                "role": "assistant",
                "content": "<think>\nI should call the tool.\n</think>\n\nLet me look.",
                "tool_calls": [call("get_weather", {"city": "Kyiv"})],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "10°C"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "inline_think_in_history",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "\n<think>greet back</think>\nHello! How can I help?"},
            {"role": "user", "content": "Tell me a joke"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "thinking_off_multi_user",
        "messages": [
            {"role": "user", "content": "first /nothink"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second/nothink"},
            {"role": "assistant", "content": "ok2"},
            {"role": "user", "content": "third"},
        ],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": False},
    },
    {
        "name": "thinking_on_explicit",
        "messages": [{"role": "user", "content": "Solve x^2 = 4"}],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": True},
    },
    {
        "name": "list_of_parts_content",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Sys part 1. "}, {"type": "text", "text": "Part 2."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "this image."},
                    "plain string part",
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "It is a cat."}]},
            {"role": "user", "content": []},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "null_content_and_string_arguments_rich_types",
        "tools": [WRITE_FILE, SEARCH],
        "messages": [
            {"role": "user", "content": "Save a script and search."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call(
                        "write_file",
                        {"path": "/tmp/a.py", "content": 'def f(x):\n    return "x" + \'y\'\n\n# done\t</arg_value>?\n'},
                        "c1",
                    ),
                    call(
                        "web_search",
                        {
                            "query": "rust 🦀",
                            "top_k": 3,
                            "filters": {"site": "docs.rs", "fresh": True, "nested": {"a": [1, 2.5, None, False, "s"]}},
                            "lang": None,
                            "ratio": 0.25,
                            "tiny": 1e-07,
                            "huge": 1e16,
                            "whole": 2.0,
                            "neg": -0.0,
                            "big": 12345678901234567890,
                            "empty_obj": {},
                            "empty_list": [],
                        },
                        "c2",
                    ),
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": None},
            {"role": "tool", "tool_call_id": "c2", "content": "[]"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "unicode_everywhere",
        "messages": [
            {"role": "system", "content": "Réponds en français. «Guillemets» — ok? 日本語も。"},
            {"role": "user", "content": "مرحبا 👋🏽 \u200b zero-width, tab\tand \\ backslash \"quotes\""},
            {"role": "assistant", "content": "Bonjour ! 👋", "reasoning_content": "Salutation."},
            {"role": "user", "content": "Ça va ?"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "no_generation_prompt_ending_with_assistant",
        "messages": [
            {"role": "user", "content": "Ping"},
            {"role": "assistant", "content": "Pong", "reasoning_content": "Reply pong."},
        ],
        "add_generation_prompt": False,
    },
    {
        "name": "empty_reasoning_in_current_loop",
        "tools": [NOW],
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": "", "reasoning_content": "", "tool_calls": [call("get_time", {}, "t1")]},
            {"role": "tool", "tool_call_id": "t1", "content": "12:00"},
            {"role": "assistant", "content": "It is noon.", "reasoning_content": "   "},
        ],
        "add_generation_prompt": False,
    },
    {
        "name": "bare_tool_call_form_and_zero_args",
        "tools": [NOW, WEATHER],
        "messages": [
            {"role": "user", "content": "Time and weather"},
            {
                "role": "assistant",
                "content": "  ",
                "tool_calls": [
                    call("get_time", "", wrapped=False, as_string=False),
                    call("get_weather", {"city": "Baku"}, wrapped=False, as_string=False),
                    {"type": "function", "function": {"name": "get_time", "arguments": None}},
                ],
            },
            {"role": "tool", "content": "09:30"},
            {"role": "tool", "content": "25°C"},
            {"role": "tool", "content": "09:31"},
        ],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": False},
    },
    {
        "name": "system_in_the_middle_and_unknown_role",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "Policy update: be terse."},
            {"role": "developer", "content": "ignored by the template"},
            {"role": "user", "content": "b"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "clear_thinking_false_preserves_history",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2", "reasoning_content": "\nR2\n"},
            {"role": "user", "content": "Q3"},
        ],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": True, "clear_thinking": False},
    },
    {
        "name": "continue_final_message_prefill",
        "messages": [
            {"role": "user", "content": "Write a haiku"},
            {"role": "assistant", "content": "Autumn moonlight—  "},
        ],
        "continue_final_message": True,
    },
    {
        "name": "reasoning_content_with_inline_think_kept_verbatim",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "<think>inline</think>visible", "reasoning_content": "explicit"},
        ],
        "add_generation_prompt": False,
    },
    {
        "name": "assistant_without_content_key",
        "tools": [NOW],
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "tool_calls": [call("get_time", {}, "t9")]},
            {"role": "tool", "tool_call_id": "t9", "content": "08:00"},
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "mapping_content_and_numbers",
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "dict content"}},
            {"role": "assistant", "content": 42},
        ],
        "add_generation_prompt": True,
    },
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--publisher", type=pathlib.Path, default=DEFAULT_PUBLISHER)
    args = ap.parse_args()

    env = hf_environment()
    publisher_src = args.publisher.read_text(encoding="utf-8")
    publisher = env.from_string(publisher_src)
    ours45 = env.from_string((CRATE / "src" / "templates" / "glm45.jinja").read_text(encoding="utf-8"))
    ours47 = env.from_string((CRATE / "src" / "templates" / "glm47.jinja").read_text(encoding="utf-8"))

    out46, out47, mismatches = [], [], []
    for case in CASES:
        expected = render(publisher, case)
        mine = render(ours45, case)
        if mine != expected:
            mismatches.append((case["name"], expected, mine))
        record = {k: case[k] for k in ("name", "messages") if k in case}
        record["tools"] = case.get("tools")
        record["add_generation_prompt"] = case.get("add_generation_prompt", False)
        record["continue_final_message"] = case.get("continue_final_message", False)
        record["kwargs"] = case.get("kwargs", {})
        out46.append(dict(record, expected=expected))
        out47.append(dict(record, expected=render(ours47, case)))

    for name, exp, got in mismatches:
        print(f"built-in GLM45 differs from the publisher template on {name}:\n  publisher {exp!r}\n  built-in  {got!r}", file=sys.stderr)
    if mismatches:
        sys.exit(1)

    golden = HERE / "golden"
    golden.mkdir(exist_ok=True)
    meta = {"jinja2": jinja2.__version__, "python": sys.version.split()[0]}
    files = {
        "glm46_publisher.json": {"template": "shared/data/chat_templates/glm-4.6.jinja", **meta, "cases": out46},
        "glm47_builtin.json": {"template": "replica/chat/src/templates/glm47.jinja", **meta, "cases": out47},
    }
    for fname, data in files.items():
        with open(golden / fname, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
    print(f"wrote {len(CASES)} cases to {golden} (built-in GLM45 == publisher on all)")


if __name__ == "__main__":
    main()
