"""The guard proxy under attack (issue 19).

- Property tests (hypothesis, derandomized): a marker word on the deny-list, obfuscated the way the
  normaliser undoes (zero-width and other format characters inside it, fullwidth letters, mixed case), is put
  in a random role, turn, content-part type, field and position (after up to 10k benign words) of chat and
  completions requests: the upstream never receives it. The upstream then puts it into a random field of
  its reply (content, parts, reasoning, refusal, tool calls, function_call, logprobs split across tokens,
  alternatives, bytes, ids, unknown fields, error messages): the client never receives it, in any field,
  even split across consecutive strings. Each case is also sent once with a benign word instead, which must
  go through, so the tests cannot pass by refusing everything. 2,200 cases in all, in-process (ASGI), plus
  a few over real HTTP (uvicorn + a loopback stub).
- A route fuzz of the ASGI app with random methods, paths, headers (content types, Host, Authorization,
  lying Content-Length) and bodies (random bytes, random JSON, huge, deep), and of the upstream's replies:
  never a 500; every refusal a 4xx (or 502) with a one-line message in OpenAI's error shape.
- Bounds: rotating bearer values do not get past the rate; the rate-limit table stays within max_keys; n is
  capped before anything is built; the upstream's reply has one deadline and a size cap; redirects are a
  502 and the redirect's target receives nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stubs import JSONServer, StubGuard

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from alignkit.errors import AlignkitError  # noqa: E402
from alignkit.ratelimit import TokenBucket  # noqa: E402
from alignkit.safety.filters import normalise  # noqa: E402
from alignkit.safety.guardrails import Guardrails, GuardrailsConfig  # noqa: E402
from alignkit.safety.client_keys import key_hash, load_client_keys  # noqa: E402
from alignkit.safety.proxy import create_app  # noqa: E402
from alignkit.safety.proxy_cli import add_serve_command  # noqa: E402
from alignkit.safety.upstream import UpstreamError, forward  # noqa: E402

MARKER = "zorblax"
BENIGN = "apple"
WORDS = ("river", "stone", "cloud", "paper", "green", "quiet", "table", "music", "light", "north")
FORMAT_CHARS = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff", "\u200e")
PROPERTY = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


# ----------------------------------------------------------------------------------------------------------
# the stub upstream (in-process) and the leak check


class StubUpstream:
    """`forward` for create_app: records every body it is sent; answers with `reply(path, body)`."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.authorizations: list[str | None] = []
        self.reply = default_reply

    def __call__(self, method, url, body, authorization, deadline_s, max_reply_bytes):
        self.sent.append(body or b"")
        self.authorizations.append(authorization)
        return self.reply(url, json.loads(body) if body else None)


def default_reply(url: str, body: dict | None) -> tuple[int, bytes]:
    reply = chat_reply(["ok"]) if url.endswith("/chat/completions") else text_reply(["ok"])
    return 200, json.dumps(reply).encode()


def strings_in_order(value, keys: bool = True) -> list[str]:
    """Every string of a JSON value (keys too, unless `keys` is False) in document order; a list of byte values
    counts as its text, and a string that is itself JSON (tool-call arguments) also adds its strings."""
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return [value]
        return [value, *strings_in_order(inner, keys)] if isinstance(inner, (dict, list, str)) else [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in ([k] if keys else []) + strings_in_order(v, keys)]
    if isinstance(value, list):
        if value and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value):
            return [bytes(value).decode("utf-8", "replace")]
        return [s for v in value for s in strings_in_order(v, keys)]
    return []


def leaks(data: bytes) -> bool:
    """Whether the marker can be read in a JSON text: in any string, or spelled across consecutive strings
    (logprob tokens), after the normaliser (so obfuscation does not hide a leak from this check either)."""
    try:
        value = json.loads(data)
    except ValueError:
        return MARKER in normalise(data.decode("utf-8", "replace"))
    pieces = strings_in_order(value)
    joined = ["".join(pieces), "".join(strings_in_order(value, keys=False))]
    return any(MARKER in normalise(p) for p in pieces + joined)


def make_client(stub: StubUpstream, **options):
    rails = Guardrails(None, options.pop("guard", None),
                       GuardrailsConfig(deny_keywords=[MARKER], **options.pop("rails", {})))
    return TestClient(create_app("http://upstream.invalid", rails, forward=stub, **options),
                      base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def harness():
    """Two in-process proxies on one stub upstream: default options, and media parts allowed."""
    stub = StubUpstream()
    with make_client(stub) as strict, make_client(stub, allow_media=True) as media:
        yield stub, strict, media


# ----------------------------------------------------------------------------------------------------------
# strategies: a case is (spot, seed, carrier); the seed fixes the request's or reply's structure, so that
# the same structure is sent once with the marker and once with a benign word in its place


@st.composite
def carrier(draw) -> tuple[str, str]:
    """(a text carrying the obfuscated marker, the same text with a benign word in its place): the marker at
    the start, in the middle or after 10k benign words."""
    chars = list(MARKER)
    if draw(st.booleans()):
        chars = [c.upper() if draw(st.booleans()) else c for c in chars]
    if draw(st.booleans()):
        chars = [chr(ord(c) + 0xFEE0) if draw(st.booleans()) else c for c in chars]  # fullwidth forms
    if draw(st.booleans()):
        chars = [c + (draw(st.sampled_from(FORMAT_CHARS)) if draw(st.booleans()) else "") for c in chars]
    before, after = draw(st.sampled_from((0, 3, 10_000))), draw(st.sampled_from((0, 4)))
    separator = draw(st.sampled_from((" ", "\n", ", ", " (", "\t")))
    head = " ".join(WORDS[i % 10] for i in range(before)) + separator if before else ""
    tail = separator + " ".join(WORDS[(i + 3) % 10] for i in range(after)) if after else ""
    return head + "".join(chars) + tail, head + BENIGN + tail


def benign_message(i: int) -> dict:
    role = ("system", "user", "assistant", "user", "developer", "user")[i % 6]
    return {"role": role, "content": f"{WORDS[i % 10]} {WORDS[(i + 3) % 10]}"}


CHAT_SPOTS = ("content", "part", "name", "tool_call_name", "tool_call_arguments", "tool_call_id", "function_call",
              "reasoning_content", "reasoning", "assistant_refusal", "tool_result", "tool_description", "tool_name",
              "tool_schema", "tool_schema_key", "function_description", "response_format", "model", "user", "stop",
              "media", "unknown_part", "unknown_field", "unknown_message_field")
TEXT_SPOTS = ("prompt", "prompt_list", "suffix", "model", "user", "stop", "unknown_field")
REFUSED_SPOTS = {"unknown_part", "unknown_field", "unknown_message_field"}  # 400 whatever the text


def build_chat(rng: random.Random, spot: str, text: str) -> dict:
    messages = [benign_message(i) for i in range(rng.randint(1, 6))]
    at = rng.randint(0, len(messages))  # where a new message goes
    role = rng.choice(("system", "developer", "user", "assistant", "tool"))
    body = {"model": "m", "messages": messages}
    if spot == "content":
        messages.insert(at, {"role": role, "content": text})
    elif spot == "part":
        kind = rng.choice(("text", "input_text", "output_text", "refusal"))
        parts = [{"type": "text", "text": "river"}] * rng.randint(0, 2)
        parts.insert(rng.randint(0, len(parts)), {"type": kind, "refusal" if kind == "refusal" else "text": text})
        messages.insert(at, {"role": role, "content": parts})
    elif spot == "name":
        messages.insert(at, {"role": role, "content": "hello", "name": text})
    elif spot.startswith("tool_call"):
        call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
        if spot == "tool_call_name":
            call["function"]["name"] = text
        elif spot == "tool_call_arguments":
            call["function"]["arguments"] = json.dumps({"q": text}, ensure_ascii=rng.random() < 0.5)
        else:
            call["id"] = text
        messages[at:at] = [{"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": call["id"], "content": "found it"}]
    elif spot == "function_call":
        messages.insert(at, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": text}})
    elif spot in ("reasoning_content", "reasoning"):
        messages.insert(at, {"role": "assistant", "content": "sure", spot: text})
    elif spot == "assistant_refusal":
        messages.insert(at, {"role": "assistant", "content": None, "refusal": text})
    elif spot == "tool_result":
        messages.insert(at, {"role": "tool", "tool_call_id": "c1", "content": text})
    elif spot.startswith("tool_"):
        schema = {"type": "object", "properties": {"q": {"type": "string", "description": "query"}}}
        function = {"name": "search", "description": "search the web", "parameters": schema}
        if spot == "tool_description":
            function["description"] = text
        elif spot == "tool_name":
            function["name"] = text
        elif spot == "tool_schema":
            schema["properties"]["q"]["description"] = text
        else:
            schema["properties"] = {text: {"type": "string"}}
        body["tools"] = [{"type": "function", "function": function}]
    elif spot == "function_description":
        body["functions"] = [{"name": "f", "description": text, "parameters": {"type": "object"}}]
    elif spot == "response_format":
        schema = {"type": "object", "properties": {"a": {"type": "string", "description": text}}}
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    elif spot in ("model", "user"):
        body[spot] = text
    elif spot == "stop":
        body["stop"] = ["\n\n", text]
    elif spot == "media":
        kind, payload = rng.choice((("image_url", {"url": "https://img.example/" + text}),
                                    ("input_audio", {"data": text, "format": "wav"}),
                                    ("file", {"file": {"filename": text, "file_data": "AAAA"}})))
        parts = [{"type": "text", "text": "look"}, {"type": kind, kind: payload}]
        messages.insert(at, {"role": "user", "content": parts})
    elif spot == "unknown_part":
        messages.insert(at, {"role": "user", "content": [{"type": "custom_text", "text": text}]})
    elif spot == "unknown_field":
        body[rng.choice(("metadata", "documents", "chat_template", "extra_body", "prediction"))] = text
    else:
        messages[min(at, len(messages) - 1)]["audio"] = {"transcript": text}
    return body


def build_completion(rng: random.Random, spot: str, text: str) -> dict:
    body = {"model": "m", "prompt": "river stone", "max_tokens": 16}
    if spot == "prompt":
        body["prompt"] = text
    elif spot == "prompt_list":
        prompts = [f"{WORDS[i]} cloud" for i in range(rng.randint(0, 3))]
        prompts.insert(rng.randint(0, len(prompts)), text)
        body["prompt"] = prompts
    elif spot == "stop":
        body["stop"] = text
    elif spot == "unknown_field":
        body[rng.choice(("prompt_embeds", "documents", "guided_json"))] = text
    else:  # suffix, model, user
        body[spot] = text
    return body


# ----------------------------------------------------------------------------------------------------------
# request direction


def send(stub: StubUpstream, client: TestClient, path: str, body: dict) -> tuple[int, list[bytes]]:
    """(status, the bodies the upstream received for this request)."""
    before = len(stub.sent)
    status = client.post(path, json=body).status_code
    return status, stub.sent[before:]


def check_request_case(harness, kind: str, spot: str, seed: int, texts: tuple[str, str], allow_media: bool):
    stub, strict, media = harness
    stub.reply = default_reply
    client = media if allow_media else strict
    build, path = (build_chat, "/v1/chat/completions") if kind == "chat" else (build_completion, "/v1/completions")
    marked, benign = texts
    status, sent = send(stub, client, path, build(random.Random(seed), spot, marked))
    assert sent == [] and status in (200, 400), (spot, status)  # blocked (a refusal) or refused: never forwarded
    status, sent = send(stub, client, path, build(random.Random(seed), spot, benign))
    refused = spot in REFUSED_SPOTS or (spot == "media" and not allow_media)
    assert (status, len(sent)) == ((400, 0) if refused else (200, 1)), (spot, status)
    assert not any(leaks(body) for body in sent)


@settings(PROPERTY, max_examples=900)
@given(spot=st.sampled_from(CHAT_SPOTS), seed=st.integers(0, 2**32 - 1), texts=carrier(), media=st.booleans())
def test_chat_requests_never_carry_the_marker_upstream(harness, spot, seed, texts, media):
    check_request_case(harness, "chat", spot, seed, texts, media)


@settings(PROPERTY, max_examples=300)
@given(spot=st.sampled_from(TEXT_SPOTS), seed=st.integers(0, 2**32 - 1), texts=carrier())
def test_completion_requests_never_carry_the_marker_upstream(harness, spot, seed, texts):
    check_request_case(harness, "text", spot, seed, texts, False)


# ----------------------------------------------------------------------------------------------------------
# reply direction


def chat_reply(contents: list[str]) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": i, "message": {"role": "assistant", "content": c}, "logprobs": None,
                         "finish_reason": "stop"} for i, c in enumerate(contents)],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def text_reply(texts: list[str]) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": "length"}
                        for i, t in enumerate(texts)], "usage": {"total_tokens": 5}}


def split_tokens(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(3, len(text) - 1))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def logprob(token: str, top: list[str] = ()) -> dict:
    entry = {"token": token, "logprob": -0.5, "bytes": list(token.encode())}
    return {**entry, "top_logprobs": [{"token": t, "logprob": -1.0, "bytes": list(t.encode())} for t in top]}


CHAT_REPLY_SPOTS = ("content", "content_parts", "reasoning_content", "reasoning", "refusal", "tool_call_name",
                    "tool_call_arguments", "tool_call_id", "function_call", "logprob_tokens", "logprob_alternative",
                    "logprob_bytes", "unknown_choice_field", "unknown_message_field", "unknown_top_field", "id",
                    "model", "system_fingerprint", "usage_string", "stop_reason", "finish_reason", "error_message")
TEXT_REPLY_SPOTS = ("text", "logprob_tokens", "logprob_alternative", "unknown_choice_field", "unknown_top_field",
                    "id", "model", "prompt_logprobs", "stop_reason", "error_message")


def build_chat_reply(rng: random.Random, spot: str, text: str) -> tuple[int, dict]:
    reply = chat_reply([f"{WORDS[i]} answer" for i in range(rng.randint(1, 3))])
    choice = rng.choice(reply["choices"])
    message = choice["message"]
    if spot == "content":
        message["content"] = text
    elif spot == "content_parts":
        message["content"] = [{"type": "text", "text": "fine"}, {"type": rng.choice(("text", "output_text")),
                                                                 "text": text}]
    elif spot in ("reasoning_content", "reasoning", "refusal"):
        message[spot] = text
    elif spot.startswith("tool_call"):
        call = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        key = {"tool_call_name": "name", "tool_call_arguments": "arguments"}.get(spot)
        if key:
            call["function"][key] = text if key == "name" else json.dumps({"q": text}, ensure_ascii=rng.random() < .5)
        else:
            call["id"] = text
        message.update(content=None, tool_calls=[call])
    elif spot == "function_call":
        message.update(content=None, function_call={"name": "f", "arguments": text})
    elif spot == "logprob_tokens":  # the marker spelled across consecutive chosen tokens
        choice["logprobs"] = {"content": [logprob(t) for t in split_tokens(rng, text)]}
    elif spot == "logprob_alternative":
        choice["logprobs"] = {"content": [logprob(message["content"], ["x", text])]}
    elif spot == "logprob_bytes":
        entry = logprob(message["content"])
        entry["bytes"] = list(text.encode())
        choice["logprobs"] = {"content": [entry], "refusal": None}
    elif spot == "unknown_choice_field":
        choice[rng.choice(("annotation", "extra", "content_filter_results"))] = {"note": text}
    elif spot == "unknown_message_field":
        message[rng.choice(("audio", "annotations", "thinking"))] = [{"transcript": text}]
    elif spot == "unknown_top_field":
        reply[rng.choice(("prompt_logprobs", "kv_transfer_params", "debug"))] = [text]
    elif spot in ("id", "model", "system_fingerprint"):
        reply[spot] = text
    elif spot == "usage_string":
        reply["usage"]["completion_tokens_details"] = {"note": text, "reasoning_tokens": 1}
    elif spot in ("stop_reason", "finish_reason"):
        choice[spot] = text
    else:
        return 400, {"error": {"message": f"bad request: {text}", "type": "BadRequestError"}}
    return 200, reply


def build_text_reply(rng: random.Random, spot: str, text: str) -> tuple[int, dict]:
    reply = text_reply([f"{WORDS[i]} more" for i in range(rng.randint(1, 3))])
    choice = rng.choice(reply["choices"])
    if spot == "text":
        choice["text"] = text
    elif spot == "logprob_tokens":
        tokens = split_tokens(rng, text)
        choice["logprobs"] = {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens), "top_logprobs": None,
                              "text_offset": list(range(len(tokens)))}
    elif spot == "logprob_alternative":
        choice["logprobs"] = {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [{"a": -0.1, text: -2.0}],
                              "text_offset": [0]}
    elif spot == "unknown_choice_field":
        choice["prompt_token_ids_text"] = text
    elif spot in ("unknown_top_field", "prompt_logprobs"):
        reply[spot] = [{"1": {"decoded_token": text}}]
    elif spot in ("id", "model"):
        reply[spot] = text
    elif spot == "stop_reason":
        choice["stop_reason"] = text
    else:
        return 400, {"error": {"message": text}}
    return 200, reply


def check_reply_case(harness, kind: str, spot: str, seed: int, texts: tuple[str, str], n: int):
    stub, client, _ = harness
    build = build_chat_reply if kind == "chat" else build_text_reply
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    request = ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": n, "logprobs": True}
               if kind == "chat" else {"model": "m", "prompt": "hi", "n": n, "logprobs": 2})
    marked, benign = texts
    for text, is_marked in ((marked, True), (benign, False)):
        status, reply = build(random.Random(seed), spot, text)
        stub.reply = lambda url, body: (status, json.dumps(reply, ensure_ascii=seed % 2 == 0).encode())
        response = client.post(path, json=request)
        assert response.status_code == status, (spot, response.status_code, response.text[:200])
        assert not leaks(response.content) if is_marked else BENIGN in response.text or spot not in (
            "content", "text", "reasoning_content", "tool_call_arguments"), spot


@settings(PROPERTY, max_examples=700)
@given(spot=st.sampled_from(CHAT_REPLY_SPOTS), seed=st.integers(0, 2**32 - 1), texts=carrier(),
       n=st.integers(1, 3))
def test_chat_replies_never_show_the_marker_to_the_client(harness, spot, seed, texts, n):
    check_reply_case(harness, "chat", spot, seed, texts, n)


@settings(PROPERTY, max_examples=300)
@given(spot=st.sampled_from(TEXT_REPLY_SPOTS), seed=st.integers(0, 2**32 - 1), texts=carrier(),
       n=st.integers(1, 3))
def test_completion_replies_never_show_the_marker_to_the_client(harness, spot, seed, texts, n):
    check_reply_case(harness, "text", spot, seed, texts, n)


# ----------------------------------------------------------------------------------------------------------
# route fuzz: raw ASGI calls, so headers and bodies can lie


def asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """(status, body) of one request to an ASGI app, the body sent in `chunks`."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    messages = messages or [{"type": "http.request", "body": b"", "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("latin-1", "replace"), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def assert_well_formed(status: int, body: bytes) -> None:
    assert status != 500 and (status < 400 or 400 <= status < 500 or status == 502), status
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
        assert isinstance(error["type"], str)


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)
request_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"messages": json_values, "model": json_values},
                          optional={k: json_values for k in ("n", "stream", "tools", "prompt")}).map(
        lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.just(b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (1 << 20) + b'"}]}'),
    st.just(b'{"model": "m", "prompt": "hi", "n": 200000}'),
)


@settings(PROPERTY, max_examples=400)
@given(method=st.sampled_from(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")),
       path=st.sampled_from(("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/", "/v1",
                             "/v1/chat/completions/", "/../etc/passwd", "/v1/embeddings", "/%00")),
       content_type=st.sampled_from((b"application/json", b"text/plain", b"application/json; charset=utf-8",
                                     b"multipart/form-data", b"", b"APPLICATION/JSON")),
       host=st.sampled_from((b"127.0.0.1:8080", b"localhost", b"evil.example", b"", b"[::1]:8080", b"127.0.0.1:x:y")),
       authorization=st.sampled_from((None, b"Bearer good-key", b"Bearer wrong", b"Basic Zm9vOmJhcg==", b"Bearer ",
                                      b"bearer good-key")),
       length=st.sampled_from(("true", "lie", "huge", "negative", "junk", "none")),
       body=request_bodies, split=st.integers(1, 4), keys=st.booleans(), reply=st.sampled_from(("ok", "junk")))
def test_route_fuzz_never_answers_500(method, path, content_type, host, authorization, length, body, split, keys,
                                      reply):
    stub = StubUpstream()
    if reply == "junk":
        stub.reply = lambda url, request: (200, b'{"choices": [{"message": 5}]}')
    rails = Guardrails(None, StubGuard(), GuardrailsConfig(deny_keywords=[MARKER], rate=1000, burst=1000))
    app = create_app("http://upstream.invalid", rails, forward=stub,
                     client_keys={key_hash("good-key"): "good"} if keys else None)
    headers = [(b"host", host)] if host else []
    headers += [(b"content-type", content_type)] if content_type else []
    headers += [(b"authorization", authorization)] if authorization else []
    headers += {"true": [(b"content-length", str(len(body)).encode())], "lie": [(b"content-length", b"3")],
                "huge": [(b"content-length", b"99999999999")], "negative": [(b"content-length", b"-1")],
                "junk": [(b"content-length", b"12abc")], "none": []}[length]
    size = max(1, len(body) // split)
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    status, answer = asgi_call(app, method, path, headers, chunks)
    assert_well_formed(status, answer)
    if keys and authorization not in (b"Bearer good-key", b"bearer good-key"):
        assert status == 401 and stub.sent == []  # before anything else


@settings(PROPERTY, max_examples=200)
@given(status=st.sampled_from((200, 201, 204, 301, 302, 400, 404, 429, 500, 503)),
       payload=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                         st.fixed_dictionaries({"choices": st.lists(st.dictionaries(
                             st.sampled_from(("index", "message", "text", "logprobs", "finish_reason")), json_values,
                             max_size=5), max_size=3)}, optional={"id": json_values, "usage": json_values,
                                                                   "model": json_values}).map(
                             lambda v: json.dumps(v).encode())),
       kind=st.sampled_from(("chat", "text")))
def test_any_upstream_answer_is_a_reply_or_a_502_never_a_500(harness, status, payload, kind):
    stub, client, _ = harness
    stub.reply = lambda url, body: (status, payload)
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"}
    response = client.post(path, json=request)
    assert_well_formed(response.status_code, response.content)
    assert response.status_code in (200, 201, 204, 502) or 400 <= response.status_code < 500


# ----------------------------------------------------------------------------------------------------------
# bounds, who may call, upstream hygiene


def test_rotating_bearer_values_do_not_get_past_the_rate():
    """rate 1/s, burst 2: without client keys the bucket is the client's address, so 20 random bearer values
    get at most burst + rate * elapsed + 1 answers; with client keys, unknown bearer values get 401."""
    stub = StubUpstream()
    rails = Guardrails(None, None, GuardrailsConfig(rate=1, burst=2))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app("http://upstream.invalid", rails, forward=stub), base_url="http://127.0.0.1") as client:
        start = time.monotonic()
        statuses = [client.post("/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {os.urandom(8).hex()}"}).status_code
                    for _ in range(20)]
        elapsed = time.monotonic() - start
    assert statuses.count(200) <= 2 + 1 * elapsed + 1 and statuses.count(200) + statuses.count(429) == 20
    assert rails.limiter.size == 1
    rails = Guardrails(None, None, GuardrailsConfig(rate=1, burst=2))
    app = create_app("http://upstream.invalid", rails, forward=stub, client_keys={key_hash("k"): "team"})
    with TestClient(app, base_url="http://127.0.0.1") as client:
        statuses = [client.post("/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {os.urandom(8).hex()}"}).status_code
                    for _ in range(20)]
    assert statuses == [401] * 20 and rails.limiter.size == 0


def test_token_bucket_table_is_a_bounded_lru_and_rate_zero_is_off():
    bucket = TokenBucket(rate=0.001, burst=1, max_keys=100)
    for i in range(10_000):
        bucket.take(f"key-{i}")
        assert bucket.size <= 100
    assert bucket.take("key-9999") > 0  # recent keys are remembered
    assert bucket.take("key-0") == 0.0  # the oldest were evicted
    assert TokenBucket(rate=0, burst=1).take("x") == 0.0 and TokenBucket(rate=0, burst=1).take("x") == 0.0
    rails = Guardrails(None, None, GuardrailsConfig(rate=0))
    assert rails.limit("anyone") == 0.0


def test_n_is_capped_before_anything_is_built(harness):
    stub, client, _ = harness
    stub.reply = default_reply
    for n in (200_000, 9, 0, -1, True, "8"):
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": MARKER}], "n": n})
        assert response.status_code == 400 and len(response.content) < 500
    reply = client.post("/v1/completions", json={"prompt": [MARKER, "b"], "n": 8}).json()
    assert len(reply["choices"]) == 16 and reply["guardrails"]["blocked"]


def test_text_over_max_input_chars_is_refused_before_the_guard_reads_it():
    stub, guard = StubUpstream(), StubGuard()
    stub.reply = default_reply
    with make_client(stub, guard=guard, max_input_chars=1000) as client:
        half = "benign words " * 40  # 520 characters
        parts = [{"role": "system", "content": half}, {"role": "user", "content": half}]
        response = client.post("/v1/chat/completions", json={"messages": parts})
        assert response.status_code == 413 and "max_input_chars (1000)" in response.json()["error"]["message"]
        assert guard.calls == [] and stub.sent == []
        assert client.post("/v1/chat/completions", json={"messages": parts[1:]}).status_code == 200


def test_requests_are_refused_with_one_line_before_forwarding(harness):
    stub, client, _ = harness
    before = len(stub.sent)
    cases = [({"messages": [{"role": "user", "content": "hi"}], "documents": ["x"]}, "documents: unknown field"),
             ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                          "image_url": {"url": "http://10.0.0.1/"}}]}]},
              "image_url parts are refused"),
             ({"messages": [{"role": "user", "content": [{"type": "weird", "text": "x"}]}]}, "unknown content part"),
             ({"messages": [{"role": "robot", "content": "x"}]}, "role: must be one of"),
             ({"messages": [{"role": "user", "content": "x", "metadata": {"a": 1}}]}, "metadata: unknown field"),
             ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature: must be a number")]
    for body, message in cases:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    response = client.post("/v1/completions", json={"prompt": [[1, 2], [3]]})
    assert response.status_code == 400 and "token ids" in response.json()["error"]["message"]
    response = client.post("/v1/chat/completions", content=b'{"messages": []}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    response = client.post("/v1/chat/completions", json={"messages": []}, headers={"Host": "evil.example"})
    assert response.status_code == 400 and "Host" in response.json()["error"]["message"]
    nulls = {"model": "m", "messages": [{"role": "user", "content": "hi", "audio": None}], "metadata": None}
    assert client.post("/v1/chat/completions", json=nulls).status_code == 200  # null carries nothing: dropped
    assert len(stub.sent) == before + 1 and b"metadata" not in stub.sent[-1]


def test_a_blocked_choice_keeps_no_tool_calls_reasoning_or_logprobs_and_others_are_kept(harness):
    stub, client, _ = harness
    reply = chat_reply(["fine answer", "other"])
    reply["choices"][0]["message"].update(tool_calls=[{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": json.dumps({"q": "\n" + MARKER})}}], reasoning_content="thinking")
    reply["choices"][0]["logprobs"] = {"content": [logprob("fine")]}
    reply["choices"][1]["logprobs"] = {"content": [logprob("other")]}
    stub.reply = lambda url, body: (200, json.dumps(reply).encode())
    out = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 2}).json()
    blocked, kept = out["choices"]
    assert blocked["message"] == {"role": "assistant", "content": blocked["message"]["content"]}
    assert blocked["logprobs"] is None and blocked["finish_reason"] == "content_filter"
    assert kept["message"]["content"] == "other" and kept["logprobs"]["content"][0]["token"] == "other"
    assert out["guardrails"]["blocked"] and out["guardrails"]["categories"] == ["denylist"]


def test_redacted_choices_lose_their_logprobs_and_the_audit_holds_redacted_text_only(tmp_path):
    stub = StubUpstream()
    audit = tmp_path / "audit.jsonl"
    reply = chat_reply(["mail ann@example.com"])
    reply["choices"][0]["logprobs"] = {"content": [logprob("mail ann@example.com")]}
    stub.reply = lambda url, body: (200, json.dumps(reply).encode())
    rails = Guardrails(None, None, GuardrailsConfig(audit_file=str(audit), audit_texts=True))
    with TestClient(create_app("http://upstream.invalid", rails, forward=stub), base_url="http://127.0.0.1") as client:
        body = {"messages": [{"role": "user", "content": "I am bo@x.io"}]}
        out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["message"]["content"] == "mail [EMAIL]" and out["choices"][0]["logprobs"] is None
    assert b"bo@x.io" in stub.sent[-1]  # redact_pii_inputs is off: the model sees it ...
    assert "bo@x.io" not in audit.read_text() and "ann@example.com" not in audit.read_text()  # ... the audit never


def test_client_keys_authenticate_and_the_client_header_never_goes_upstream(tmp_path, monkeypatch, capsys):
    import argparse

    keys_file = tmp_path / "keys"
    parser = argparse.ArgumentParser(prog="alignkit guard")
    add_serve_command(parser.add_subparsers(dest="guard_command"))
    args = parser.parse_args(["add-key", "--client_keys_file", str(keys_file), "--name", "team-a"])
    assert args.func(args) == 0
    key = capsys.readouterr().out.strip()
    assert key not in keys_file.read_text() and (keys_file.stat().st_mode & 0o777) == 0o600
    keys = load_client_keys(str(keys_file))
    assert list(keys.values()) == ["team-a"]
    stub = StubUpstream()
    rails = Guardrails(None, None, GuardrailsConfig())
    app = create_app("http://upstream.invalid", rails, forward=stub, client_keys=keys)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        assert client.get("/health").status_code == 401
        # an unauthenticated request is refused before its body is read: no 413 for a huge Content-Length
        huge = {"Content-Length": "99999999999", "Content-Type": "application/json"}
        assert client.post("/v1/chat/completions", content=b"x", headers=huge).status_code == 401
        good = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/chat/completions", json=body, headers=good).status_code == 200
    assert stub.authorizations == [None]  # the client's key is the proxy's business, not the upstream's
    monkeypatch.setenv("ALIGNKIT_UPSTREAM_API_KEY", "sk-operator")
    from alignkit.safety.proxy_cli import GuardServeConfig, upstream_api_key

    assert upstream_api_key(GuardServeConfig(upstream="http://x")) == "sk-operator"
    assert "sk-operator" not in repr(GuardServeConfig(upstream="http://x", upstream_api_key="sk-operator"))
    bad = tmp_path / "bad"
    bad.write_text("team-b not-a-hash\n")
    with pytest.raises(AlignkitError, match="bad:1: client_keys_file"):
        load_client_keys(str(bad))


# ----------------------------------------------------------------------------------------------------------
# real HTTP: uvicorn in front of loopback stubs


def read_request(conn) -> None:
    """Read one HTTP request (headers, then Content-Length bytes of body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class SlowServer:
    """A raw loopback server answering 200 with a body it trickles, or a body of `size` bytes at once."""

    def __init__(self, trickle: bool, size: int = 0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.trickle, self.size, self.stop = trickle, size, threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            read_request(conn)  # all of it: unread bytes at close would make the kernel reset the connection
            length = 10_000_000 if self.trickle else self.size
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            conn.sendall(head.encode())
            try:
                if self.trickle:
                    while not self.stop.wait(0.05):
                        conn.sendall(b" ")
                else:
                    conn.sendall(b" " * self.size)
                    self.stop.wait(10)  # keep the socket open until the client has given up reading
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


def test_the_upstream_deadline_covers_the_whole_reply_and_its_size_is_capped():
    slow = SlowServer(trickle=True)
    start = time.monotonic()
    with pytest.raises(UpstreamError, match="deadline|no reply within"):
        forward("POST", slow.url + "/v1/chat/completions", b"{}", None, 1.0)
    assert time.monotonic() - start < 3.0  # one deadline, although a byte arrives every 50 ms
    slow.close()
    big = SlowServer(trickle=False, size=3 << 20)
    with pytest.raises(UpstreamError, match="reply over 1048576 bytes"):
        forward("POST", big.url + "/v1/chat/completions", b"{}", None, 10.0, max_reply_bytes=1 << 20)
    big.close()


@pytest.fixture()
def served():
    """serve(app) -> base URL: uvicorn on loopback in a thread, stopped after the test."""
    import uvicorn

    servers = []

    def serve(app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 20
        while not server.started:
            assert time.time() < deadline
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def post(url: str, body: dict, token: str | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_redirects_are_a_502_and_their_target_receives_nothing(served):
    elsewhere = JSONServer(lambda method, path, body: (200, json.dumps(chat_reply(["from elsewhere"]))))
    redirecting = JSONServer(lambda method, path, body: (302, "{}", {"Location": elsewhere.url + path}))
    rails = Guardrails(None, None, GuardrailsConfig())
    url = served(create_app(redirecting.url, rails, upstream_api_key="sk-operator"))
    status, data = post(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 502 and "redirect" in json.loads(data)["error"]["message"]
    assert redirecting.requests[0][2] == "Bearer sk-operator" and elsewhere.requests == []
    elsewhere.close()
    redirecting.close()


def test_over_real_http_the_marker_reaches_neither_side(served):
    def handle(method, path, body):
        reply = chat_reply(["plain"])
        reply["choices"][0]["message"].update(reasoning_content=f"the {MARKER.upper()} plan", tool_calls=[
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": json.dumps({"x": MARKER})}}])
        reply["debug"] = {"echo": MARKER}
        return 200, json.dumps(reply)

    upstream = JSONServer(handle)
    rails = Guardrails(None, StubGuard(), GuardrailsConfig(deny_keywords=[MARKER]))
    url = served(create_app(upstream.url, rails))
    hidden = "zor\u200bbl\uff41x"
    for messages in ([{"role": "system", "content": f"obey {hidden}"}, {"role": "user", "content": "hi"}],
                     [{"role": "user", "content": [{"type": "input_text", "text": hidden}]}],
                     [{"role": "tool", "tool_call_id": "c", "content": "x " * 10_000 + hidden}]):
        status, data = post(url + "/v1/chat/completions", {"model": "m", "messages": messages})
        assert status == 200 and json.loads(data)["guardrails"]["stage"] == "input"
    assert upstream.requests == []
    status, data = post(url + "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and len(upstream.requests) == 1 and not leaks(data)
    assert json.loads(data)["guardrails"]["stage"] == "output"
    upstream.close()
