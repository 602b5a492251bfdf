"""The official `openai` Python client against `glmfleet serve` (issue "OpenAI-compatible replica server").

Run by tests/tests/openai_client.rs, which starts the servers and passes their addresses:

  GLMFLEET_OPENAI_URL            the demo model (free-running), started with --api-key
  GLMFLEET_OPENAI_KEY            that key
  GLMFLEET_OPENAI_TOOLS_URL      a scripted server that always answers with a GLM-4.5 tool call
                                 (--tool-call-parser glm45 --enable-auto-tool-choice)
  GLMFLEET_OPENAI_REASONING_URL  a scripted server that always answers "<think>...</think>answer"
                                 (--reasoning-parser glm45)
  GLMFLEET_OPENAI_MODEL          the served model name (default "demo")

Each scripted server replays one response for every request, so these tests do not depend on order.
Only the standard library and `openai` are needed: `python3 tests/openai/test_openai_client.py -v`.
"""

import concurrent.futures
import json
import os
import sys
import time
import unittest
import urllib.request

import openai

MODEL = os.environ.get("GLMFLEET_OPENAI_MODEL", "demo")

# The scripted servers' responses (tests/tests/openai_client.rs writes the same texts).
TOOL_ARGS = {"city": "Paris", "days": 3}
REASONING = "The user greets me."
ANSWER = "Hello there!"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: run this through `cargo test -p e2e --test openai_client`")
    return value


def client(url_var, api_key="none", **kw):
    return openai.OpenAI(base_url=env(url_var) + "/v1", api_key=api_key, max_retries=0, timeout=30, **kw)


def demo(**kw):
    return client("GLMFLEET_OPENAI_URL", api_key=env("GLMFLEET_OPENAI_KEY"), **kw)


def extra(choice, name):
    """A vLLM extension field of a response object (`stop_reason`, `reasoning_content`, ...)."""
    return (choice.model_extra or {}).get(name)


def hello(content="Hello"):
    return [{"role": "user", "content": content}]


# Greedy, fixed length: the same request always gives the same text.
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


class DemoModel(unittest.TestCase):
    """Free-running generation on the embedded demo model."""

    @classmethod
    def setUpClass(cls):
        cls.c = demo()

    def test_models_list(self):
        ids = [m.id for m in self.c.models.list().data]
        self.assertIn(MODEL, ids)

    def test_chat_non_streaming(self):
        r = self.c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=8, **GREEDY)
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertEqual(len(r.choices), 1)
        ch = r.choices[0]
        self.assertEqual(ch.index, 0)
        self.assertEqual(ch.message.role, "assistant")
        self.assertIsInstance(ch.message.content, str)
        self.assertEqual(ch.finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 8)
        # max_completion_tokens is the current name of max_tokens.
        r2 = self.c.chat.completions.create(model=MODEL, messages=hello(), max_completion_tokens=8, **GREEDY)
        self.assertEqual(r2.choices[0].message.content, ch.message.content)

    def test_chat_streaming_matches_non_streaming(self):
        full = self.c.chat.completions.create(model=MODEL, messages=hello("Stream"), max_tokens=10, **GREEDY)
        stream = self.c.chat.completions.create(
            model=MODEL, messages=hello("Stream"), max_tokens=10, stream=True, **GREEDY
        )
        chunks = list(stream)
        self.assertGreater(len(chunks), 1)
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["length"])
        # Without stream_options no chunk carries usage.
        self.assertTrue(all(c.usage is None for c in chunks))

    def test_stream_options_include_usage(self):
        stream = self.c.chat.completions.create(
            model=MODEL,
            messages=hello(),
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        chunks = list(stream)
        last = chunks[-1]
        self.assertEqual(last.choices, [])
        self.assertIsNotNone(last.usage)
        self.assertEqual(last.usage.completion_tokens, 6)
        self.assertEqual(last.usage.total_tokens, last.usage.prompt_tokens + 6)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))
        # Completions too.
        chunks = list(
            self.c.completions.create(
                model=MODEL,
                prompt="Count",
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
                **GREEDY,
            )
        )
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 5)

    def test_completions_text(self):
        r = self.c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7, **GREEDY)
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertIsInstance(r.choices[0].text, str)
        self.assertEqual(r.usage.completion_tokens, 7)
        streamed = self.c.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=7, stream=True, **GREEDY
        )
        self.assertEqual("".join(c.choices[0].text for c in streamed if c.choices), r.choices[0].text)

    def test_completions_list_of_texts(self):
        prompts = ["The sky is", "GLM models are", "1 2 3"]
        batch = self.c.completions.create(model=MODEL, prompt=prompts, max_tokens=6, **GREEDY)
        self.assertEqual(sorted(ch.index for ch in batch.choices), [0, 1, 2])
        by_index = {ch.index: ch.text for ch in batch.choices}
        for i, p in enumerate(prompts):
            alone = self.c.completions.create(model=MODEL, prompt=p, max_tokens=6, **GREEDY)
            self.assertEqual(by_index[i], alone.choices[0].text, f"prompt {i}")
        self.assertEqual(batch.usage.completion_tokens, 18)

    def test_completions_token_ids(self):
        text = "Tokens in, tokens out"
        ids = tokenize(text)
        self.assertGreater(len(ids), 1)
        by_text = self.c.completions.create(model=MODEL, prompt=text, max_tokens=6, **GREEDY)
        by_ids = self.c.completions.create(model=MODEL, prompt=ids, max_tokens=6, **GREEDY)
        self.assertEqual(by_ids.choices[0].text, by_text.choices[0].text)
        self.assertEqual(by_ids.usage.prompt_tokens, len(ids))
        # A list of token lists: one choice per prompt.
        lists = self.c.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=4, **GREEDY)
        self.assertEqual(sorted(ch.index for ch in lists.choices), [0, 1])
        self.assertEqual(lists.usage.prompt_tokens, len(ids) + 2)

    def test_n_choices(self):
        r = self.c.chat.completions.create(
            model=MODEL, messages=hello(), n=2, max_tokens=8, temperature=1, seed=5, extra_body={"ignore_eos": True}
        )
        self.assertEqual(sorted(ch.index for ch in r.choices), [0, 1])
        self.assertEqual(r.usage.completion_tokens, 16)
        # Choice i is seeded with seed + i: two different samples.
        self.assertNotEqual(r.choices[0].message.content, r.choices[1].message.content)
        c = self.c.completions.create(
            model=MODEL, prompt="Two ways", n=2, max_tokens=5, temperature=1, seed=5, extra_body={"ignore_eos": True}
        )
        self.assertEqual(sorted(ch.index for ch in c.choices), [0, 1])
        # Streaming: both choices arrive, each finished once.
        chunks = list(
            self.c.chat.completions.create(
                model=MODEL, messages=hello(), n=2, max_tokens=4, stream=True, temperature=0,
                extra_body={"ignore_eos": True},
            )
        )
        finished = sorted(ch.index for c in chunks for ch in c.choices if ch.finish_reason)
        self.assertEqual(finished, [0, 1])
        texts = ["", ""]
        for c in chunks:
            for ch in c.choices:
                texts[ch.index] += ch.delta.content or ""
        # Greedy: both choices are the same text.
        self.assertEqual(texts[0], texts[1])

    def test_stop_strings(self):
        full = self.c.completions.create(model=MODEL, prompt="Stop here", max_tokens=24, logprobs=0, **GREEDY)
        text = full.choices[0].text
        # A stop string from the middle of the greedy output: an ASCII word token after the first.
        candidates = [t for t in full.choices[0].logprobs.tokens[2:] if t.strip().isalnum() and t.isascii()]
        self.assertTrue(candidates, f"no usable stop string in {text!r}")
        stop = candidates[0].strip()
        cut = text.find(stop)
        self.assertGreaterEqual(cut, 0)
        r = self.c.completions.create(model=MODEL, prompt="Stop here", max_tokens=24, stop=[stop, "\u2603never"], **GREEDY)
        ch = r.choices[0]
        self.assertEqual(ch.text, text[:cut])
        self.assertEqual(ch.finish_reason, "stop")
        self.assertEqual(extra(ch, "stop_reason"), stop)
        # Streaming stops at the same place and never leaks the stop string.
        streamed = list(
            self.c.completions.create(model=MODEL, prompt="Stop here", max_tokens=24, stop=stop, stream=True, **GREEDY)
        )
        self.assertEqual("".join(c.choices[0].text for c in streamed if c.choices), text[:cut])
        self.assertEqual(streamed[-1].choices[0].finish_reason, "stop")
        # include_stop_str_in_output keeps it.
        kept = self.c.completions.create(
            model=MODEL, prompt="Stop here", max_tokens=24, stop=stop, temperature=0,
            extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
        )
        self.assertEqual(kept.choices[0].text, text[: cut + len(stop)])

    def test_chat_logprobs(self):
        r = self.c.chat.completions.create(
            model=MODEL, messages=hello(), max_tokens=6, logprobs=True, top_logprobs=3, **GREEDY
        )
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 6)
        for tok in content:
            self.assertLessEqual(tok.logprob, 0.0)
            self.assertEqual(len(tok.top_logprobs), 3)
            best = tok.top_logprobs[0]
            # Greedy: the sampled token is the most likely one.
            self.assertEqual(best.token, tok.token)
            self.assertAlmostEqual(best.logprob, tok.logprob, places=5)
            lps = [t.logprob for t in tok.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            self.assertEqual(bytes(tok.bytes).decode("utf-8"), tok.token)
        # Streaming: logprobs per chunk, same tokens.
        chunks = list(
            self.c.chat.completions.create(
                model=MODEL, messages=hello(), max_tokens=6, logprobs=True, top_logprobs=3, stream=True, **GREEDY
            )
        )
        streamed = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        self.assertEqual(streamed, [t.token for t in content])
        # Without logprobs: none.
        plain = self.c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=2, **GREEDY)
        self.assertIsNone(plain.choices[0].logprobs)

    def test_completions_logprobs(self):
        r = self.c.completions.create(model=MODEL, prompt="Log", max_tokens=5, logprobs=2, **GREEDY)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 5)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertEqual(len(lp.top_logprobs), 5)
        self.assertEqual(len(lp.text_offset), 5)
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(p, 0.0)
            self.assertGreaterEqual(len(top), 1)
            self.assertLessEqual(len(top), 2)
            self.assertAlmostEqual(max(top.values()), p, places=5)
            self.assertIn(tok, top)

    def test_prefix_cache_reported_in_usage(self):
        # A unique head (so earlier runs cannot have cached it) shared by two prompts of > 1 block.
        head = f"{os.getpid()} {id(self)} " + "shared words " * 40
        first = self.c.completions.create(model=MODEL, prompt=head + "first", max_tokens=2, **GREEDY)
        second = self.c.completions.create(model=MODEL, prompt=head + "second", max_tokens=2, **GREEDY)
        self.assertEqual(first.usage.prompt_tokens_details.cached_tokens, 0)
        cached = second.usage.prompt_tokens_details.cached_tokens
        self.assertGreater(cached, 0)
        self.assertLess(cached, second.usage.prompt_tokens)

    def test_concurrent_requests_match_sequential(self):
        prompts = [f"Request number {i}: " + "abc " * (i * 7) for i in range(12)]

        def run(p):
            return self.c.completions.create(model=MODEL, prompt=p, max_tokens=8, **GREEDY).choices[0].text

        sequential = [run(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            concurrent_ = list(pool.map(run, prompts))
        self.assertEqual(concurrent_, sequential)

    def test_closing_a_stream_aborts_the_request(self):
        aborted = abort_count()
        stream = self.c.completions.create(
            model=MODEL, prompt="Go on", max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
        self.assertGreaterEqual(server_json("/load")["running"], 1)
        stream.close()
        deadline = time.monotonic() + 10
        while True:
            load = server_json("/load")
            if load["running"] == 0 and load["waiting"] == 0:
                break
            self.assertLess(time.monotonic(), deadline, f"request still running after the client left: {load}")
            time.sleep(0.02)
        self.assertEqual(load["free_blocks"], load["num_blocks"])
        self.assertEqual(abort_count(), aborted + 1)

    def test_seed_reproducibility(self):
        def sample(seed):
            r = self.c.chat.completions.create(
                model=MODEL, messages=hello("Tell me"), max_tokens=12, temperature=1.0, seed=seed,
                extra_body={"ignore_eos": True},
            )
            return r.choices[0].message.content

        a, b, c = sample(42), sample(42), sample(43)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        # Completions as well, and negative seeds are accepted.
        comp = [
            self.c.completions.create(
                model=MODEL, prompt="Seeds", max_tokens=10, temperature=0.9, seed=-7, extra_body={"ignore_eos": True}
            ).choices[0].text
            for _ in range(2)
        ]
        self.assertEqual(comp[0], comp[1])


class Errors(unittest.TestCase):
    """Errors reach the client as the SDK's typed exceptions with OpenAI's error body."""

    @classmethod
    def setUpClass(cls):
        cls.c = demo()

    def check(self, exc_type, status, call, param=None):
        with self.assertRaises(exc_type) as cm:
            call()
        e = cm.exception
        self.assertEqual(e.status_code, status)
        self.assertIsInstance(e.body, dict, f"error body: {e.body!r}")
        self.assertTrue(e.body.get("message"))
        self.assertEqual(e.body.get("code"), status)
        if param is not None:
            self.assertEqual(e.body.get("param"), param)
        # Client errors must not be retried.
        if 400 <= status < 500:
            self.assertEqual(e.response.headers.get("x-should-retry"), "false")
        return e

    def test_bad_types(self):
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages=hello(), temperature="hot"),
        )
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.completions.create(model=MODEL, prompt=[1, "two"], max_tokens=2),
        )
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages="not a list", max_tokens=2),
        )
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages=hello(), n=0),
            param="n",
        )
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages=hello(), top_p=0),
            param="top_p",
        )

    def test_unknown_model(self):
        e = self.check(
            openai.NotFoundError, 404,
            lambda: self.c.chat.completions.create(model="no-such-model", messages=hello(), max_tokens=2),
            param="model",
        )
        self.assertIn("no-such-model", e.body["message"])
        # Streaming requests fail before the stream starts.
        self.check(
            openai.NotFoundError, 404,
            lambda: self.c.completions.create(model="no-such-model", prompt="x", max_tokens=2, stream=True),
        )

    def test_max_tokens_too_large(self):
        e = self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=10**7),
            param="max_tokens",
        )
        self.assertIn("maximum context length", e.body["message"])
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.completions.create(model=MODEL, prompt="x", max_tokens=10**7, stream=True),
        )

    def test_bad_api_key(self):
        bad = client("GLMFLEET_OPENAI_URL", api_key="sk-wrong")
        self.check(openai.AuthenticationError, 401, lambda: bad.models.list())
        self.check(
            openai.AuthenticationError, 401,
            lambda: bad.chat.completions.create(model=MODEL, messages=hello(), max_tokens=2),
        )
        # The right key works (the other tests use it too).
        self.assertTrue(demo().models.list().data)

    def test_logprobs_limits(self):
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.chat.completions.create(model=MODEL, messages=hello(), max_tokens=2, top_logprobs=2),
            param="top_logprobs",
        )
        self.check(
            openai.BadRequestError, 400,
            lambda: self.c.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=10**6),
            param="logprobs",
        )


class ToolCalls(unittest.TestCase):
    """A scripted model that answers every request with a GLM-4.5 tool call."""

    @classmethod
    def setUpClass(cls):
        cls.c = client("GLMFLEET_OPENAI_TOOLS_URL")

    def ask(self, **kw):
        return self.c.chat.completions.create(
            model=MODEL, messages=hello("Weather in Paris for 3 days?"), tools=[WEATHER_TOOL], temperature=0, **kw
        )

    def test_tool_call_non_streaming_and_round_trip(self):
        r = self.ask()
        ch = r.choices[0]
        self.assertEqual(ch.finish_reason, "tool_calls")
        self.assertFalse(ch.message.content)
        self.assertEqual(len(ch.message.tool_calls), 1)
        call = ch.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertTrue(call.id)
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), TOOL_ARGS)
        # Second turn: the SDK's own objects go back as history with the tool result.
        messages = hello("Weather in Paris for 3 days?") + [
            ch.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
        ]
        r2 = self.c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0)
        self.assertEqual(r2.choices[0].finish_reason, "tool_calls")
        # The prompt grew by the call and its result.
        self.assertGreater(r2.usage.prompt_tokens, r.usage.prompt_tokens)

    def test_tool_call_streaming(self):
        calls = {}
        finish = None
        content = ""
        for chunk in self.ask(stream=True):
            if not chunk.choices:
                continue
            ch = chunk.choices[0]
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    acc["id"] = tc.id
                if tc.function and tc.function.name:
                    acc["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    acc["arguments"] += tc.function.arguments
            finish = ch.finish_reason or finish
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(content.strip(), "")
        self.assertEqual(list(calls), [0])
        self.assertTrue(calls[0]["id"])
        self.assertEqual(calls[0]["name"], "get_weather")
        self.assertEqual(json.loads(calls[0]["arguments"]), TOOL_ARGS)

    def test_tool_choice_none_returns_text(self):
        r = self.ask(tool_choice="none")
        ch = r.choices[0]
        self.assertFalse(ch.message.tool_calls)
        self.assertIn("<tool_call>get_weather", ch.message.content)


class Reasoning(unittest.TestCase):
    """A scripted model that thinks first (--reasoning-parser glm45)."""

    @classmethod
    def setUpClass(cls):
        cls.c = client("GLMFLEET_OPENAI_REASONING_URL")

    def test_reasoning_non_streaming(self):
        r = self.c.chat.completions.create(model=MODEL, messages=hello("Hi"), temperature=0)
        msg = r.choices[0].message
        self.assertEqual(extra(msg, "reasoning_content"), REASONING)
        self.assertEqual(extra(msg, "reasoning"), REASONING)
        self.assertEqual(msg.content.strip(), ANSWER)
        self.assertNotIn("<think>", msg.content)
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_reasoning_streaming(self):
        reasoning, content = "", ""
        for chunk in self.c.chat.completions.create(model=MODEL, messages=hello("Hi"), temperature=0, stream=True):
            if chunk.choices:
                d = chunk.choices[0].delta
                reasoning += extra(d, "reasoning_content") or ""
                content += d.content or ""
        self.assertEqual(reasoning, REASONING)
        self.assertEqual(content.strip(), ANSWER)


def server_json(path, body=None):
    """A JSON endpoint of the demo server outside the OpenAI API (`/tokenize`, `/load`)."""
    req = urllib.request.Request(
        env("GLMFLEET_OPENAI_URL") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + env("GLMFLEET_OPENAI_KEY")},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def abort_count():
    """`vllm:request_success_total{finished_reason="abort"}` from the demo server's /metrics."""
    with urllib.request.urlopen(env("GLMFLEET_OPENAI_URL") + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def tokenize(text):
    """Token ids of `text` from the server's /tokenize."""
    return server_json("/tokenize", {"model": MODEL, "prompt": text})["tokens"]


if __name__ == "__main__":
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}", flush=True)
    unittest.main(verbosity=2)
