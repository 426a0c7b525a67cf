"""HTTP hardening shared by alignkit's two servers (the annotation app and the guard proxy).

`limit_requests(app, reply, ...)` wraps an ASGI app so that, before any route runs:
- a body over `max_body_bytes` is refused with 413: by its Content-Length before a byte is read, and while
  reading when the client sends more than it announced or streams it chunked;
- a body that claims to be JSON (or names no type) is scanned for nesting deeper than `max_json_depth` (400), so no handler
  ever recurses into an attacker's 100,000 brackets;
- a request whose Host is not one of `trusted_hosts` gets 400 (DNS rebinding against a loopback server).

`reply(status, message)` builds the refusal, so each app keeps its own error shape. The body is read
once, then handed on to the app unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Callable

MAX_BODY_BYTES = 1 << 20  # 1 MiB
MAX_JSON_DEPTH = 64
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)  # alternatives are disjoint: linear time
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of [ and { in a JSON text (strings skipped), in linear time without recursion."""
    brackets = _JSON_STRING.sub(b'""', raw).translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for b in brackets:
        if b in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH):
    """The JSON value in `raw`; ValueError (with a one-line reason) when it is not JSON or nests too deep."""
    if json_depth(raw) > max_depth:
        raise ValueError(f"JSON nests deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"not JSON ({getattr(error, 'msg', type(error).__name__)})") from None


def host_allowed(host_header: str, trusted: tuple[str, ...] | list[str]) -> bool:
    """Whether a Host header (with or without port) names one of `trusted` ("*" trusts any)."""
    if "*" in trusted:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        name = host[:host.find("]") + 1] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return bool(name) and (name in trusted or name.strip("[]") in trusted)


def default_trusted_hosts(bind_host: str) -> list[str]:
    """Loopback names when listening on loopback; the bound address itself otherwise (add names with
    --trusted_hosts, or "*" behind a proxy that checks Host itself)."""
    if bind_host in ("127.0.0.1", "localhost", "::1"):
        return list(LOOPBACK_HOSTS)
    if bind_host in ("0.0.0.0", "::"):
        return ["*"]
    return [bind_host, *LOOPBACK_HOSTS]


def limit_requests(app, reply: Callable[[int, str], object], max_body_bytes: int = MAX_BODY_BYTES,
                   max_json_depth: int = MAX_JSON_DEPTH, trusted_hosts: list[str] | None = None):
    """`app` behind the body, JSON-depth and Host checks (a plain ASGI wrapper; see the module docstring)."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if trusted_hosts is not None and not host_allowed(headers.get("host", ""), trusted_hosts):
            return await reply(400, "Host header not allowed (start the server with --trusted_hosts NAME)")(
                scope, receive, send)
        length = headers.get("content-length", "").strip()
        if length and not length.isdigit():
            return await reply(400, "Content-Length is not a number")(scope, receive, send)
        if length and int(length) > max_body_bytes:
            return await reply(413, f"request body over {max_body_bytes} bytes")(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body_bytes:
                return await reply(413, f"request body over {max_body_bytes} bytes")(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        kind = headers.get("content-type", "").lower()
        # FastAPI parses a body without a Content-Type as JSON too
        if body and ("json" in kind or not kind) and json_depth(body) > max_json_depth:
            return await reply(400, f"JSON nests deeper than {max_json_depth} levels")(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return guarded
