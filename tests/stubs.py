"""Stand-ins shared by several test files: a loopback JSON HTTP server and a keyword guard."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alignkit.safety.guard import Verdict


class JSONServer:
    """A loopback HTTP server in a thread. `handle(method, path, body)` returns (status, text) for each request
    (body is the parsed JSON of a POST, None for a GET), or (status, text, headers) to send extra headers (a
    redirect's Location); every request is kept in `requests` as (path, body, Authorization header)."""

    def __init__(self, handle: Callable[[str, str, dict | None], tuple[int, str]]):
        self.requests: list[tuple[str, dict | None, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def answer(self, body):
                with server.lock:
                    server.requests.append((self.path, body, self.headers.get("Authorization")))
                status, text, *extra = handle(self.command, self.path, body)
                data = text.encode()
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[dict]:
        return [body for _, body, _ in self.requests if body is not None]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StubGuard:
    """Flags a prompt containing WEAPON (category weapons) and a response containing SECRET (privacy);
    remembers every call as (role, texts)."""

    def __init__(self):
        self.calls = []

    def classify(self, texts, role="prompt"):
        self.calls.append((role, list(texts)))
        word, category = ("WEAPON", "weapons") if role == "prompt" else ("SECRET", "privacy")
        return [Verdict(False, [category], {category: 0.97}) if word in t else Verdict(True, [], {category: 0.01})
                for t in texts]
