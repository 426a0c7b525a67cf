"""The OpenAI-compatible guard proxy, on loopback: uvicorn in a thread in front of a stub upstream that
counts its requests. Flagged inputs never reach the upstream, flagged outputs are replaced, clean replies
come back byte for byte, a dead upstream is a 502, and under load from four threads the number of answered
requests stays within the token bucket's bound while the rest get 429."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from stubs import JSONServer, StubGuard

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from alignkit.errors import AlignkitError  # noqa: E402
from alignkit.safety.guardrails import Guardrails, GuardrailsConfig, refusal_message  # noqa: E402
from alignkit.safety.client_keys import key_hash  # noqa: E402
from alignkit.safety.proxy import create_app  # noqa: E402
from alignkit.safety.proxy_cli import add_serve_command, load_guard  # noqa: E402


class Upstream:
    """A tiny OpenAI-compatible server: answers `answer` (or 'reply to: <last user message>'), remembers each
    POST as (path, body, Authorization) and the exact bytes of each reply; `status` forces an error status."""

    def __init__(self):
        self.replies, self.answer, self.status = [], None, 200
        self.http = JSONServer(self.handle)
        self.url = self.http.url

    @property
    def requests(self) -> list[tuple]:
        return [r for r in self.http.requests if r[1] is not None]

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, str]:
        if body is None:
            return 200, json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        if self.status != 200:
            return self.status, json.dumps({"error": {"message": "stub says no"}})
        if path.endswith("/chat/completions"):
            text = self.answer or "reply to: " + body["messages"][-1]["content"]
            choices = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
            kind = "chat.completion"
        else:
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            choices = [{"index": i, "text": self.answer or "reply to: " + p, "finish_reason": "length"}
                       for i, p in enumerate(prompts)]
            kind = "text_completion"
        # unusual spacing and key order, so that a re-encoded reply would not match byte for byte
        data = json.dumps({"object": kind, "id": "x-1", "model": body.get("model"), "choices": choices,
                           "usage": {"total_tokens": 7}}, indent=1, ensure_ascii=True)
        with self.http.lock:
            self.replies.append(data.encode())
        return 200, data

    def close(self):
        self.http.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def upstream():
    stub = Upstream()
    yield stub
    stub.close()


@pytest.fixture()
def proxy():
    """make(upstream_url, **GuardrailsConfig fields) → the proxy's base URL; servers stop after the test."""
    import uvicorn

    servers = []

    def make(upstream_url, guard=StubGuard(), client_keys=None, **config):
        rails = Guardrails(None, guard, GuardrailsConfig(**config))
        port = free_port()
        app = create_app(upstream_url, rails, timeout=5, client_keys=client_keys)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 20
        while not server.started:
            assert time.time() < deadline, "proxy did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield make
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def call(url: str, body=None, token: str | None = None, raw: bytes | None = None):
    """(status, headers, body bytes) of a POST (or a GET when there is no body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def chat(text: str, **extra) -> dict:
    return {"model": "stub-model", "messages": [{"role": "user", "content": text}], **extra}


def test_flagged_input_is_refused_without_contacting_the_upstream(upstream, proxy):
    url = proxy(upstream.url)
    status, _, data = call(url + "/v1/chat/completions", chat("build me a WEAPON", n=2))
    reply = json.loads(data)
    assert status == 200 and upstream.requests == []
    assert reply["object"] == "chat.completion" and reply["model"] == "stub-model"
    assert [c["message"]["content"] for c in reply["choices"]] == [refusal_message(["weapons"], "input")] * 2
    assert {c["finish_reason"] for c in reply["choices"]} == {"content_filter"}
    assert reply["guardrails"] == {"blocked": True, "stage": "input", "categories": ["weapons"]}
    # completions: one flagged prompt in a list blocks the request, with a refusal per prompt
    status, _, data = call(url + "/v1/completions", {"prompt": ["hello", "a WEAPON"]})
    assert status == 200 and upstream.requests == []
    assert [c["text"] for c in json.loads(data)["choices"]] == [refusal_message(["weapons"], "input")] * 2


def test_flagged_output_is_replaced(upstream, proxy):
    url = proxy(upstream.url)
    upstream.answer = "the SECRET is 42"
    reply = json.loads(call(url + "/v1/chat/completions", chat("tell me"))[2])
    assert len(upstream.requests) == 1
    assert reply["choices"][0]["message"]["content"] == refusal_message(["privacy"], "output")
    assert reply["choices"][0]["finish_reason"] == "content_filter"
    assert reply["guardrails"]["stage"] == "output" and reply["guardrails"]["categories"] == ["privacy"]
    assert reply["id"] == "x-1" and reply["usage"] == {"total_tokens": 7}  # the rest of the reply is kept


def test_clean_traffic_comes_back_byte_for_byte(upstream, proxy):
    url = proxy(upstream.url)
    for path, body in [("/v1/chat/completions", chat("what is 2+2?")),
                       ("/v1/completions", {"model": "m", "prompt": ["one", "two"], "max_tokens": 5})]:
        status, headers, data = call(url + path, body, token="client-key")
        assert status == 200 and data == upstream.replies[-1]
        assert upstream.requests[-1] == (path, body, "Bearer client-key")  # forwarded as sent
    assert "guardrails" not in json.loads(data)
    status, _, data = call(url + "/v1/models")
    assert status == 200 and json.loads(data)["data"][0]["id"] == "stub-model"
    status, _, data = call(url + "/health")
    assert status == 200 and json.loads(data)["status"] == "ok"


def test_pii_is_redacted_in_replies_and_optionally_before_forwarding(upstream, proxy):
    url = proxy(upstream.url, redact_pii_inputs=True)
    upstream.answer = "card 4111-1111-1111-1111 or 4111-1111-1111-1112"
    reply = json.loads(call(url + "/v1/chat/completions", chat("I am ann@example.com"))[2])
    assert upstream.requests[-1][1]["messages"][0]["content"] == "I am [EMAIL]"
    assert reply["choices"][0]["message"]["content"] == "card [CREDIT_CARD] or 4111-1111-1111-1112"
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["guardrails"] == {"blocked": False, "stage": None, "categories": [],
                                   "redactions": ["input:email", "output:credit_card"]}


def test_upstream_failures_are_502_and_client_errors_pass_through(upstream, proxy):
    dead = f"http://127.0.0.1:{free_port()}"
    url = proxy(dead)
    for path, body in [("/v1/chat/completions", chat("hi")), ("/v1/models", None)]:
        status, _, data = call(url + path, body)
        message = json.loads(data)["error"]["message"]
        assert status == 502 and message.startswith(f"upstream {dead}/v1/") and "\n" not in message
    url = proxy(upstream.url)
    upstream.status = 500
    status, _, data = call(url + "/v1/chat/completions", chat("hi"))
    assert status == 502 and json.loads(data)["error"]["message"].endswith("HTTP 500")
    upstream.status = 400
    status, _, data = call(url + "/v1/chat/completions", chat("hi"))
    assert status == 400 and json.loads(data)["error"]["message"] == "stub says no"


def test_bad_requests_are_400_and_never_forwarded(upstream, proxy):
    url = proxy(upstream.url)
    status, _, data = call(url + "/v1/chat/completions", chat("hi", stream=True))
    assert status == 400 and "stream: true is not supported" in json.loads(data)["error"]["message"]
    assert call(url + "/v1/chat/completions", raw=b"{not json")[0] == 400
    status, _, data = call(url + "/v1/completions", {"prompt": [1, 2, 3]})
    assert status == 400 and "token ids" in json.loads(data)["error"]["message"]
    assert call(url + "/v1/chat/completions", {"messages": []})[0] == 400
    assert upstream.requests == []


def test_rate_limit_per_bearer_token_with_retry_after(upstream, proxy, tmp_path):
    audit = tmp_path / "audit.jsonl"
    # the rate limit is keyed on the authenticated client key (never on an unauthenticated bearer string)
    keys = {key_hash("alice-secret"): "alice", key_hash("bob"): "bob"}
    url = proxy(upstream.url, client_keys=keys, rate=0.001, burst=2, audit_file=str(audit))
    statuses = [call(url + "/v1/chat/completions", chat("hi"), token="alice-secret")[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    status, headers, data = call(url + "/v1/chat/completions", chat("hi"), token="alice-secret")
    assert status == 429 and int(headers["Retry-After"]) >= 1 and "rate limit" in json.loads(data)["error"]["message"]
    assert call(url + "/v1/chat/completions", chat("hi"), token="bob")[0] == 200
    assert len(upstream.requests) == 3
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["stage"] for r in records].count("rate_limit") == 2 and len(records) == 5
    assert "alice-secret" not in audit.read_text()  # keys are hashed


def test_load_from_four_threads_stays_within_the_token_bucket_bound(upstream, proxy):
    """One client key, rate R and burst B: by time t the bucket can have given at most B + R·t tokens, so
    the number of 200s is at most B + R·elapsed (+1 for rounding at the edges), at least B, and every other
    request is a 429. Each 200 and no 429 reached the upstream."""
    rate, burst, threads, each = 20.0, 10, 4, 50
    url = proxy(upstream.url, rate=rate, burst=burst)
    statuses, lock = [], threading.Lock()

    def client():
        for _ in range(each):
            status = call(url + "/v1/chat/completions", chat("hello"), token="load")[0]
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    ok, limited = statuses.count(200), statuses.count(429)
    print(f"\nload: {threads}x{each} requests in {elapsed:.2f} s, rate {rate}/s burst {burst}: "
          f"{ok} answered (bound {burst + rate * elapsed + 1:.1f}), {limited} limited")
    assert ok + limited == threads * each
    assert burst <= ok <= burst + rate * elapsed + 1
    assert len(upstream.requests) == ok


def test_serve_command_reads_yaml_and_options(tmp_path, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: started.update(app=app, host=host,
                                                                                         port=port))
    parser = argparse.ArgumentParser(prog="alignkit guard")
    add_serve_command(parser.add_subparsers(dest="guard_command"))
    rails = tmp_path / "rails.yaml"
    rails.write_text("deny_keywords: [forbidden]\nrate: 5\nport: 9001\n")
    args = parser.parse_args(["serve", "--upstream", "http://127.0.0.1:9", "--guard", "none",
                              "--config", str(rails), "--port", "9002"])
    assert args.func(args) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 9002)  # the command line wins over the YAML
    client = TestClient(started["app"], base_url="http://127.0.0.1:9002")  # a trusted Host
    reply = client.post("/v1/chat/completions", json=chat("a forbidden word")).json()
    assert reply["guardrails"]["categories"] == ["denylist"]
    with pytest.raises(AlignkitError, match="config: upstream: give the model server's URL"):
        args = parser.parse_args(["serve", "--guard", "none"])
        args.func(args)
    assert load_guard("none") is None
    with pytest.raises(AlignkitError, match="guard"):
        load_guard(str(tmp_path / "no-such-guard"))
