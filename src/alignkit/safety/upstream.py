"""Forwarding to the upstream model server, bounded: one deadline for the whole exchange, a cap on the reply's
size, and no redirects.

`forward(method, url, body, authorization, deadline_s, max_reply_bytes)` uses the standard library's
http.client (no extra dependency). The deadline covers connecting, sending, the reply's headers and its
whole body: the body is read in chunks and reading stops when the deadline passes, and a watchdog closes the
socket at the deadline, so an upstream that trickles one byte at a time cannot hold a worker beyond it.
A 3xx is never followed (following it would send the operator's Authorization header to whatever host the
redirect names); it is an upstream error like a 5xx. Proxy environment variables (HTTP_PROXY) are not used.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse

MAX_REPLY_BYTES = 8 << 20  # 8 MiB
CHUNK = 64 << 10


class UpstreamError(Exception):
    """The upstream gave no usable reply; the message is the one line the client sees (502)."""


def upstream_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"upstream {url}: not an http(s) URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":  # the default context verifies the certificate and the host name
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout), path
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), path


def _read_body(response: http.client.HTTPResponse, sock_of, url: str, deadline: float, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UpstreamError(f"upstream {url}: reply not complete within the deadline")
        sock = sock_of()
        if sock is not None:
            sock.settimeout(left)
        chunk = response.read1(CHUNK)
        if not chunk:
            if time.monotonic() >= deadline:  # the watchdog closed the socket
                raise UpstreamError(f"upstream {url}: reply not complete within the deadline")
            if response.length:  # fewer bytes than Content-Length announced
                raise UpstreamError(f"upstream {url}: reply cut short")
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"upstream {url}: reply over {limit} bytes (the proxy's --max_reply_bytes)")
        chunks.append(chunk)


def forward(method: str, url: str, body: bytes | None, authorization: str | None, deadline_s: float,
            max_reply_bytes: int = MAX_REPLY_BYTES) -> tuple[int, bytes]:
    """(status, body) of the upstream's answer, 4xx included; UpstreamError when there is no usable answer
    (no connection, past the deadline, too large, a redirect, a 1xx/3xx/5xx)."""
    deadline = time.monotonic() + deadline_s
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    connection, path = _connection(url, deadline_s)
    watchdog = threading.Timer(deadline_s, _shut, (connection,))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        if not (200 <= response.status < 300 or 400 <= response.status < 500):
            if 300 <= response.status < 400:
                raise UpstreamError(f"upstream {url}: answered a redirect, which is not followed "
                                    f"(HTTP {response.status})")
            raise UpstreamError(f"upstream {url}: HTTP {response.status}")
        return response.status, _read_body(response, lambda: connection.sock, url, deadline, max_reply_bytes)
    except UpstreamError:
        raise
    except (socket.timeout, TimeoutError):
        raise UpstreamError(f"upstream {url}: no reply within {deadline_s:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        if time.monotonic() >= deadline:
            raise UpstreamError(f"upstream {url}: no reply within {deadline_s:g} s") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UpstreamError(f"upstream {url}: {reason}") from None
    finally:
        watchdog.cancel()
        connection.close()


def _shut(connection: http.client.HTTPConnection) -> None:
    """At the deadline: unblock whatever read or write the worker is in."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
