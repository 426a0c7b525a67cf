"""An OpenAI-compatible guard proxy: `alignkit guard serve --upstream URL` in front of any OpenAI-compatible
model server (vLLM, llama.cpp, TGI, ...), applying `Guardrails` to every request.

Routes: POST /v1/chat/completions and /v1/completions (non-streaming; `stream: true` gets a 400, because the
output rail needs the whole reply before anything may be shown), GET /v1/models (passed through), GET /health.

For each request, in order:
1. rate limit per client, keyed by the Authorization bearer token (a hash of it) or else the client address:
   over the limit, 429 with Retry-After (whole seconds) and retry-after-ms;
2. input rails on the last user message (chat) or each prompt (completions; one flagged prompt blocks the
   request). A blocked request never reaches the upstream: it gets an ordinary completion object whose
   content is the refusal, finish_reason "content_filter", and a `guardrails` field naming the categories;
3. the request is forwarded (PII redacted first if `redact_pii_inputs`); the upstream's 4xx answers are
   passed back as they are, anything else that is not a reply (refused connection, timeout, 5xx, not JSON)
   becomes a 502 with one line saying what happened;
4. output rails on each choice: a flagged choice's content becomes the refusal with finish_reason
   "content_filter", PII is redacted, and a `guardrails` field is added. When nothing was changed, the
   upstream's reply is returned byte for byte.

Forwarding uses the standard library's urllib (no extra dependency); FastAPI and uvicorn come with the
`annotate` extra.
"""

# no `from __future__ import annotations` here: FastAPI reads the route functions' annotations (Request)
# at run time, and a string naming a type imported inside create_app cannot be resolved
import copy
import hashlib
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.safety.guardrails import Guardrails, GuardrailsConfig, RailResult


@dataclass
class GuardServeConfig:
    """`alignkit guard serve`: the proxy's own options plus every GuardrailsConfig key (flat)."""

    upstream: str = ""
    """the OpenAI-compatible server to guard, e.g. http://127.0.0.1:8000 (/v1 is added when missing)"""
    guard: str = "default"
    """guard classifier: a directory holding a saved GuardClassifier, default (the built-in one) or none"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only)"""
    port: int = 8080
    """port to listen on"""
    upstream_api_key: str | None = None
    """send this key upstream; when unset, the client's own Authorization header is forwarded"""
    timeout: float = 120.0
    """seconds to wait for the upstream's reply before answering 502"""
    rails: GuardrailsConfig = field(default_factory=GuardrailsConfig)

    def check(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise AlignkitError(f"config: upstream: give the model server's URL (http://HOST:PORT), "
                                f"got {self.upstream!r}")
        if not 0 < self.port < 65536:
            raise AlignkitError(f"config: port: must be 1-65535, got {self.port}")
        if self.timeout <= 0:
            raise AlignkitError(f"config: timeout: must be positive, got {self.timeout}")
        self.rails.check()


def load_guard(spec: str):
    """The guard named on the command line: none, default, or a directory holding a saved classifier."""
    if spec == "none":
        return None
    try:
        from alignkit.safety.guard import GuardClassifier, default_guard
    except ImportError:
        raise AlignkitError("guard: the guard classifier (alignkit.safety.guard) is not in this install; "
                            "use --guard none for deny-lists and PII redaction only") from None
    if spec == "default":
        return default_guard()
    if not Path(spec).is_dir():
        raise AlignkitError(f"{spec}: guard: not a directory (give a saved guard classifier, default or none)")
    return GuardClassifier.load(spec)


class UpstreamError(Exception):
    """The upstream gave no usable reply; the message is the one line the client sees."""


def upstream_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def forward(method: str, url: str, body: bytes | None, authorization: str | None,
            timeout: float) -> tuple[int, bytes]:
    """(status, body) of the upstream's answer, 4xx included; UpstreamError when there is no answer."""
    import socket
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:
        raise UpstreamError(f"upstream {url}: {error.reason}") from None
    except (socket.timeout, TimeoutError):
        raise UpstreamError(f"upstream {url}: no reply within {timeout:g} s") from None
    except OSError as error:  # connection reset mid-reply and the like
        raise UpstreamError(f"upstream {url}: {error}") from None


def _error(status: int, message: str, kind: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def _prompts(kind: str, body: dict) -> list:
    """The conversations the input rail reads: the chat's messages, or each completions prompt as a string."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages: must be a non-empty list of {role, content} objects")
        return [messages]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise ValueError("prompt: must be a string or a list of strings (token ids cannot be checked)")


def _choices_text(kind: str, reply: dict) -> list[tuple[dict, str]]:
    """(choice, its text) for each choice that has text to check (tool calls without content have none)."""
    out = []
    for choice in reply.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content") if kind == "chat" else choice.get("text")
        if isinstance(text, str):
            out.append((choice, text))
    return out


def refusal_reply(kind: str, body: dict, result: RailResult, prompts: int) -> dict:
    """An ordinary completion object carrying the refusal, as if the model had said it."""
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": result.text},
                    "logprobs": None, "finish_reason": "content_filter"} for i in range(n)]
    else:
        choices = [{"index": i, "text": result.text, "logprobs": None, "finish_reason": "content_filter"}
                   for i in range(n * prompts)]
    return {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-guard-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": body.get("model", ""), "choices": choices,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "guardrails": {"blocked": True, "stage": "input", "categories": result.categories}}


def create_app(upstream: str, rails: Guardrails, upstream_api_key: str | None = None, timeout: float = 120.0,
               guard_name: str = ""):
    """The proxy as an ASGI app (run it with uvicorn)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    base = upstream_base(upstream)
    app = FastAPI(title="alignkit guard proxy", docs_url=None, redoc_url=None, openapi_url=None)

    def client_key(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and header[7:].strip():
            # a hash, so that keys never sit in memory tables or the audit file
            return "key:" + hashlib.sha256(header[7:].strip().encode()).hexdigest()[:16]
        return "addr:" + (request.client.host if request.client else "unknown")

    def json_reply(status: int, data: bytes) -> Response:
        return Response(content=data, status_code=status, media_type="application/json")

    def handle(kind: str, body: dict, key: str, authorization: str | None, start: float) -> Response:
        """The blocking part of a completion request (rails, upstream call); runs in a worker thread."""
        try:
            prompts = _prompts(kind, body)
        except ValueError as error:
            return _error(400, f"guard proxy: {error}", "invalid_request_error")
        sent, verdicts, redactions = rails.screen_inputs(prompts)
        blocked = [v for v in verdicts if v is not None]
        if blocked:
            categories = sorted({c for v in blocked for c in v.categories})
            result = RailResult(rails.refusal(categories, "input"), True, "input", categories,
                                {k: s for v in blocked for k, s in v.scores.items()},
                                [r for found in redactions for r in found], time.perf_counter() - start)
            rails.audit([result], [key], [prompts])
            return JSONResponse(refusal_reply(kind, body, result, len(prompts)))
        if any(redactions):
            body = copy.deepcopy(body)
            if kind == "chat":
                body["messages"] = sent[0]
            else:
                body["prompt"] = sent[0] if isinstance(body["prompt"], str) else sent
        path = "/chat/completions" if kind == "chat" else "/completions"
        auth = f"Bearer {upstream_api_key}" if upstream_api_key else authorization
        try:
            status, data = forward("POST", base + path, json.dumps(body).encode(), auth, timeout)
            if 400 <= status < 500:
                return json_reply(status, data)
            if status != 200:
                raise UpstreamError(f"upstream {base + path}: HTTP {status}")
            try:
                reply = json.loads(data)
            except ValueError:
                raise UpstreamError(f"upstream {base + path}: reply is not JSON") from None
            if not isinstance(reply, dict):
                raise UpstreamError(f"upstream {base + path}: reply is not a JSON object")
        except UpstreamError as error:
            return _error(502, str(error), "upstream_error")
        checked = _choices_text(kind, reply)
        results = rails.screen_outputs([text for _, text in checked])
        for result in results:
            result.latency = time.perf_counter() - start
            result.redactions = [r for found in redactions for r in found] + result.redactions
        rails.audit(results, [key] * len(results), [prompts] * len(results))
        if not any(r.blocked or r.redactions for r in results):
            return json_reply(status, data)  # untouched: the upstream's bytes
        for (choice, _), result in zip(checked, results):
            if kind == "chat":
                choice["message"]["content"] = result.text
            else:
                choice["text"] = result.text
            if result.blocked:
                choice["finish_reason"] = "content_filter"
        blocked = [r for r in results if r.blocked]
        reply["guardrails"] = {"blocked": bool(blocked), "stage": "output" if blocked else None,
                               "categories": sorted({c for r in blocked for c in r.categories}),
                               "redactions": sorted({f"{x['stage']}:{x['kind']}" for r in results
                                                     for x in r.redactions})}
        return JSONResponse(reply)

    async def completion(kind: str, request: Request) -> Response:
        start = time.perf_counter()
        key = client_key(request)
        wait = rails.limit(key)
        if wait:
            limited = rails.limited(wait)
            limited.latency = time.perf_counter() - start
            rails.audit([limited], [key])
            return _error(429, f"rate limit: {rails.config.rate:g} requests/s, bursts of {rails.config.burst}; "
                          f"retry in {wait:.2f} s", "rate_limit_error",
                          {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))})
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "guard proxy: the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "guard proxy: the request body must be a JSON object", "invalid_request_error")
        if body.get("stream"):
            return _error(400, "guard proxy: stream: true is not supported (the output rail checks the whole "
                          "reply before any of it is sent); send stream: false", "invalid_request_error")
        return await run_in_threadpool(handle, kind, body, key, request.headers.get("authorization"), start)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await completion("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await completion("text", request)

    @app.get("/v1/models")
    async def models(request: Request):
        auth = f"Bearer {upstream_api_key}" if upstream_api_key else request.headers.get("authorization")
        try:
            status, data = await run_in_threadpool(forward, "GET", base + "/models", None, auth, timeout)
        except UpstreamError as error:
            return _error(502, str(error), "upstream_error")
        if status >= 500:
            return _error(502, f"upstream {base}/models: HTTP {status}", "upstream_error")
        return json_reply(status, data)

    @app.get("/health")
    async def health():
        return {"status": "ok", "upstream": base, "guard": guard_name or type(rails.guard).__name__}

    return app


def serve(config: GuardServeConfig) -> None:
    import uvicorn

    config.check()
    rails = Guardrails(None, load_guard(config.guard), config.rails)
    app = create_app(config.upstream, rails, config.upstream_api_key, config.timeout, config.guard)
    print(f"alignkit guard: proxy for {upstream_base(config.upstream)} on http://{config.host}:{config.port}/v1 "
          f"(guard: {config.guard}); Ctrl-C stops", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def serve_command(args) -> int:
    """`alignkit guard serve`: options and --config YAML → GuardServeConfig → serve."""
    from alignkit.config import build_config, flat_fields

    names = flat_fields(GuardServeConfig)
    values = {k: v for k, v in vars(args).items() if k in names}
    config = build_config(GuardServeConfig, values, recipe=getattr(args, "config", None))
    serve(config)
    return 0


def add_serve_command(guard_subparsers):
    """Add `serve` to the `alignkit guard` command group (pass the group's subparsers object)."""
    from alignkit.cli import option
    from alignkit.config import add_arguments

    text = "run an OpenAI-compatible proxy that applies guardrails in front of a model server"
    p = guard_subparsers.add_parser("serve", help=text, description=text + ". See docs/safety.md.")
    option(p, "--config", help="YAML file of option: value pairs (any option below, e.g. the rails)")
    add_arguments(p, GuardServeConfig)
    p.set_defaults(func=serve_command)
    return p
