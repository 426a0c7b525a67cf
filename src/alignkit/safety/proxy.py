"""An OpenAI-compatible guard proxy: `alignkit guard serve --upstream URL` in front of any OpenAI-compatible
model server (vLLM, llama.cpp, TGI, ...), applying `Guardrails` to every text of every request and reply.

Routes: POST /v1/chat/completions and /v1/completions (non-streaming; `stream: true` gets a 400, because the
output rail needs the whole reply before anything may be shown), GET /v1/models, GET /health.

For each request, in order, before the body is read:
1. with client keys (`--client_keys_file`), a request without a valid `Authorization: Bearer KEY` gets 401;
2. a POST that is not `Content-Type: application/json` gets 415 (so a browser's cross-site form post fails);
3. the rate limit, keyed on the key's name when client keys are set, else on the client's address (never on
   an unauthenticated bearer string): over it, 429 with Retry-After and retry-after-ms;
4. the Host header must name a trusted host (400: DNS rebinding), the body must fit `max_body_bytes` (413)
   and nest at most 64 levels (400) (`alignkit.serving.limit_requests`).
Then:
5. the request is rebuilt from an allowlist (`alignkit.safety.openai_request.parse_request`): unknown fields,
   unknown content parts, token-id prompts, `n` over `max_n` get 400; more than `max_input_chars` of text,
   413 (the guard reads every 256-token window, so its cost grows with the text);
6. input rails on every text of it (deny-lists on all, the guard on what `input_scope` names, PII redaction
   if `redact_pii_inputs`). A blocked request never reaches the upstream: it gets an ordinary completion
   object whose content is the refusal, finish_reason "content_filter", and a `guardrails` field;
7. the request is forwarded (`alignkit.safety.upstream.forward`: one deadline, a reply size cap, no
   redirects); the upstream's 4xx answers come back as an error object with its message (if the deny-list
   passes it), anything else that is not a reply becomes a 502 with one line saying what happened;
8. the reply is rebuilt from the known shape of a completion object (unknown fields dropped) and the output
   rails run on every text of each choice: a flagged choice becomes the refusal (no tool calls, reasoning or
   logprobs), a redacted one loses its logprobs. When nothing changed, the upstream's bytes are returned.

Every refusal is a 4xx (or 502) with one line in OpenAI's error shape {"error": {"message", "type"}}.
Forwarding uses the standard library (no extra dependency); Starlette and uvicorn come with the `annotate`
extra. The threat model and a TLS deployment are in docs/guardrails.md. Client keys are handled in
`alignkit.safety.client_keys`; the command line (`alignkit guard serve`) is `alignkit.safety.proxy_cli`.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import uuid

from alignkit.safety.client_keys import authenticate
from alignkit.safety.filters import redact_pii
from alignkit.safety.guardrails import Guardrails, RailResult
from alignkit.safety.openai_reply import (ReplyError, blocked_choice, choice_texts, clean_reply, reply_texts,
                                         rewrite_choice)
from alignkit.safety.openai_request import joined_conversation, parse_request, request_choices
from alignkit.safety.upstream import MAX_REPLY_BYTES, UpstreamError, upstream_base
from alignkit.safety.upstream import forward as forward_http
from alignkit.serving import MAX_BODY_BYTES, MAX_JSON_DEPTH, default_trusted_hosts, limit_requests, parse_json

# about 32k tokens: the guard reads them as ~170 windows, ~4 s on 2 CPU cores (docs/guardrails.md)
MAX_INPUT_CHARS = 131_072
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error", 502: "upstream_error"}


# ----------------------------------------------------------------------------------------------------------
# answers


def error_response(status: int, message: str, headers: dict | None = None):
    """OpenAI's error shape, with the message on one line."""
    from starlette.responses import JSONResponse

    line = " ".join(str(message).split())[:500]
    return JSONResponse({"error": {"message": line, "type": ERROR_TYPES.get(status, "invalid_request_error")}},
                        status_code=status, headers=headers)


def refusal_reply(kind: str, body: dict, result: RailResult) -> dict:
    """An ordinary completion object carrying the refusal, as if the model had said it (one choice per choice
    the request asked for; `body` is the parsed request, so n is already capped)."""
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": result.text},
                    "logprobs": None, "finish_reason": "content_filter"} for i in range(request_choices(kind, body))]
    else:
        choices = [{"index": i, "text": result.text, "logprobs": None, "finish_reason": "content_filter"}
                   for i in range(request_choices(kind, body))]
    return {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-guard-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": body.get("model", ""), "choices": choices,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "guardrails": {"blocked": True, "stage": "input", "categories": result.categories}}


def public_url(url: str) -> str:
    """The URL without user:password@ (for /health)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return url
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


class Proxy:
    """The proxy's work between the HTTP layer and the upstream; every method answers, none raises for bad
    input. `forward(method, url, body, authorization, deadline_s, max_reply_bytes) -> (status, bytes)`."""

    def __init__(self, upstream: str, rails: Guardrails, upstream_api_key: str | None, timeout: float,
                 client_keys: dict[str, str] | None, max_n: int, max_reply_bytes: int, allow_media: bool,
                 forward=forward_http, max_input_chars: int = MAX_INPUT_CHARS):
        self.base, self.rails, self.forward = upstream_base(upstream), rails, forward
        self.upstream_api_key, self.timeout, self.client_keys = upstream_api_key, timeout, client_keys
        self.max_n, self.max_reply_bytes, self.allow_media = max_n, max_reply_bytes, allow_media
        self.max_input_chars = max_input_chars

    def authorization(self, client_header: str | None) -> str | None:
        """What goes upstream: the proxy's key; else, only when clients are not authenticated by the proxy,
        the client's own header (with client keys it is the proxy's key to the proxy, never the upstream's)."""
        if self.upstream_api_key:
            return f"Bearer {self.upstream_api_key}"
        return client_header if self.client_keys is None else None

    def guard_view(self):
        """Over HTTP the client writes the whole history, so the guard reads every text the model reads; with
        input_scope conversation, also the whole conversation as one text."""
        if self.rails.config.input_scope == "conversation":
            return lambda texts: [t.text for t in texts if t.model_reads] + [joined_conversation(texts)]
        return None

    def call(self, method: str, path: str, body: bytes | None, client_header: str | None) -> tuple[int, bytes]:
        return self.forward(method, self.base + path, body, self.authorization(client_header), self.timeout,
                            self.max_reply_bytes)

    def upstream_refusal(self, status: int, data: bytes):
        """The upstream's 4xx as an error object: its message when the deny-list passes it (PII redacted)."""
        message = f"upstream refused the request (HTTP {status})"
        try:
            error = parse_json(data)["error"]
            text = error["message"] if isinstance(error, dict) else error
            if isinstance(text, str) and text.strip() and not self.rails.denied.search(text):
                message = redact_pii(text, self.rails.config.pii_kinds)[0]
        except (ValueError, KeyError, TypeError, IndexError):
            pass
        return error_response(status, message)

    def completion(self, kind: str, raw: bytes, identity: str, client_header: str | None, start: float):
        """The blocking part of a completion request (rails, upstream call); runs in a worker thread."""
        from starlette.responses import JSONResponse, Response

        try:
            body, texts = parse_request(kind, parse_json(raw), self.max_n, self.allow_media)
        except ValueError as error:  # RequestError, or parse_json's not JSON / too deep
            return error_response(400, f"guard proxy: {error}")
        size = sum(len(t.text) for t in texts)
        if size > self.max_input_chars:  # the guard reads every window of every text: its cost grows with size
            return error_response(413, f"guard proxy: the request holds {size} characters of text, more than "
                                  f"max_input_chars ({self.max_input_chars}); send less or raise --max_input_chars")
        [screened] = self.rails.screen([texts], "input", self.guard_view())
        prompt = [screened.rewrites.get(t.where, t.text) for t in texts if t.model_reads]
        if screened.blocked is not None:
            screened.blocked.latency = time.perf_counter() - start
            self.rails.audit([screened.blocked], [identity], [prompt])
            return JSONResponse(refusal_reply(kind, body, screened.blocked))
        if screened.rewrites:
            body, _ = parse_request(kind, body, self.max_n, self.allow_media,
                                    visit=lambda t: screened.rewrites.get(t.where, t.text))
        path = "/chat/completions" if kind == "chat" else "/completions"
        try:
            status, data = self.call("POST", path, json.dumps(body).encode(), client_header)
            if 400 <= status < 500:
                return self.upstream_refusal(status, data)
            try:
                reply = parse_json(data)
            except ValueError as error:
                raise UpstreamError(f"upstream {self.base + path}: reply is {error}") from None
            clean = clean_reply(kind, reply)
        except (UpstreamError, ReplyError) as error:
            return error_response(502, str(error))
        changed, results = self.screen_reply(kind, clean, body)
        for result in results:
            result.latency = time.perf_counter() - start
            result.redactions = screened.redactions + result.redactions
        self.rails.audit(results, [identity] * len(results), [prompt] * len(results))
        if not changed and not screened.redactions and clean == reply:
            return Response(content=data, status_code=status, media_type="application/json")  # the upstream's bytes
        if changed or screened.redactions:
            blocked = [r for r in results if r.blocked]
            clean["guardrails"] = {"blocked": bool(blocked), "stage": "output" if blocked else None,
                                   "categories": sorted({c for r in blocked for c in r.categories}),
                                   "redactions": sorted({f"{x['stage']}:{x['kind']}" for r in results
                                                         for x in r.redactions})}
        return JSONResponse(clean)

    def screen_reply(self, kind: str, reply: dict, request: dict) -> tuple[bool, list[RailResult]]:
        """Output rails on every text of each choice (in place); (whether anything changed, a result per
        choice). The reply's own strings (id, model, ...) are read by the deny-lists: flagged, they are
        replaced by neutral values."""
        groups = [choice_texts(kind, c) for c in reply["choices"]]
        *screened, meta = self.rails.screen(groups + [reply_texts(reply)], "output")
        changed = meta.blocked is not None
        if changed:
            reply.update(id=f"guard-{uuid.uuid4().hex[:24]}", model=request.get("model", ""))
            for key in ("system_fingerprint", "service_tier"):
                reply.pop(key, None)
        results = []
        for i, (choice, texts, outcome) in enumerate(zip(reply["choices"], groups, screened)):
            shown = next((t.text for t in texts if t.where in ("message.content", "text")), "")
            if outcome.blocked is not None:
                reply["choices"][i] = blocked_choice(kind, choice, outcome.blocked.text)
                results.append(outcome.blocked)
            elif outcome.rewrites:
                reply["choices"][i] = rewrite_choice(kind, choice, outcome.rewrites,
                                                     lambda text: redact_pii(text, self.rails.config.pii_kinds)[0])
                results.append(RailResult(outcome.rewrites.get("message.content" if kind == "chat" else "text",
                                                               shown), redactions=outcome.redactions))
            else:
                results.append(RailResult(shown))
            changed = changed or outcome.blocked is not None or bool(outcome.rewrites)
        return changed, results

    def models(self, client_header: str | None):
        """GET /v1/models, with each model's id, object, created and owned_by (entries the deny-list flags are
        left out)."""
        from starlette.responses import JSONResponse

        try:
            status, data = self.call("GET", "/models", None, client_header)
            if 400 <= status < 500:
                return self.upstream_refusal(status, data)
            listing = parse_json(data)
            entries = listing.get("data") if isinstance(listing, dict) else None
            if not isinstance(entries, list):
                raise UpstreamError(f"upstream {self.base}/models: reply is not a model list")
        except (UpstreamError, ValueError) as error:
            return error_response(502, str(error) if isinstance(error, UpstreamError)
                                  else f"upstream {self.base}/models: reply is {error}")
        models = []
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                kept = {k: entry[k] for k in ("id", "object", "created", "owned_by")
                        if isinstance(entry.get(k), (str, int)) and not isinstance(entry.get(k), bool)}
                if not any(self.rails.denied.search(v) for v in kept.values() if isinstance(v, str)):
                    models.append(kept)
        return JSONResponse({"object": "list", "data": models})


# ----------------------------------------------------------------------------------------------------------
# the HTTP layer


def gate(app, proxy: Proxy, rails: Guardrails):
    """Client key (401), JSON content type (415) and rate limit (429), before the body is read; the caller's
    identity goes on in scope["alignkit.identity"]."""

    async def gated(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if proxy.client_keys is not None:
            name = authenticate(headers.get("authorization", ""), proxy.client_keys)
            if name is None:
                return await error_response(401, "guard proxy: send a valid client key as Authorization: Bearer "
                                            "KEY", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            identity = f"key:{name}"
        else:
            identity = "addr:" + (scope["client"][0] if scope.get("client") else "unknown")
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                return await error_response(415, "guard proxy: send the body as Content-Type: application/json")(
                    scope, receive, send)
            wait = rails.limit(identity)
            if wait:
                limited = rails.limited(wait)
                rails.audit([limited], [identity])
                config = rails.config
                return await error_response(
                    429, f"rate limit: {config.rate:g} requests/s, bursts of {config.burst}; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))})(
                    scope, receive, send)
        scope["alignkit.identity"] = identity
        return await app(scope, receive, send)

    return gated


def create_app(upstream: str, rails: Guardrails, upstream_api_key: str | None = None, timeout: float = 120.0,
               guard_name: str = "", client_keys: dict[str, str] | None = None,
               trusted_hosts: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES, max_n: int = 8,
               max_reply_bytes: int = MAX_REPLY_BYTES, allow_media: bool = False, forward=forward_http,
               max_input_chars: int = MAX_INPUT_CHARS):
    """The proxy as an ASGI app (run it with uvicorn). `client_keys` maps key hashes to names (None: no client
    authentication); `trusted_hosts` defaults to the loopback names; `forward` replaces the HTTP call to the
    upstream (tests)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.routing import Route

    proxy = Proxy(upstream, rails, upstream_api_key, timeout, client_keys, max_n, max_reply_bytes, allow_media,
                  forward, max_input_chars)

    def route(kind: str):
        async def completion(request: Request):
            start = time.perf_counter()
            raw = await request.body()
            return await run_in_threadpool(proxy.completion, kind, raw, request.scope["alignkit.identity"],
                                           request.headers.get("authorization"), start)
        return completion

    async def models(request: Request):
        return await run_in_threadpool(proxy.models, request.headers.get("authorization"))

    async def health(request: Request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "upstream": public_url(proxy.base),
                             "guard": guard_name or type(rails.guard).__name__})

    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, f"guard proxy: {error.detail} ({request.method} "
                              f"{request.url.path[:100]})")

    app = Starlette(routes=[Route("/v1/chat/completions", route("chat"), methods=["POST"]),
                            Route("/v1/completions", route("text"), methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])],
                    exception_handlers={HTTPException: http_error})
    hosts = list(trusted_hosts) if trusted_hosts is not None else default_trusted_hosts("127.0.0.1")
    return gate(limit_requests(app, error_response, max_body_bytes, MAX_JSON_DEPTH, hosts), proxy, rails)
