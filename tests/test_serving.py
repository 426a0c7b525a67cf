"""alignkit.serving: the body, JSON-depth and Host checks both servers sit behind."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from alignkit.serving import (default_trusted_hosts, host_allowed, json_depth, limit_requests,  # noqa: E402
                              parse_json)


def test_json_depth_skips_strings_and_escapes():
    assert json_depth(b"1") == 0 and json_depth(b"[]") == 1
    assert json_depth(b'{"a": [1, {"b": "[[[\\"["}]}') == 3  # brackets and an escaped quote inside a string
    assert json_depth(b"[" * 100_000) == 100_000  # no recursion, however deep


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=20))
def test_json_depth_matches_the_parsed_value(value):
    def depth(v):
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


def test_parse_json_refuses_deep_nesting_and_non_json_in_one_line():
    assert parse_json(b'{"a": [1]}') == {"a": [1]}
    for raw in (b"[" * 5000 + b"]" * 5000, b"{nope"):
        with pytest.raises(ValueError) as error:
            parse_json(raw)
        assert "\n" not in str(error.value)


def test_host_allowed():
    loopback = default_trusted_hosts("127.0.0.1")
    assert host_allowed("127.0.0.1:8080", loopback) and host_allowed("localhost", loopback)
    assert host_allowed("[::1]:8080", loopback)
    assert not host_allowed("evil.example:8080", loopback) and not host_allowed("", loopback)
    assert not host_allowed("127.0.0.1.evil.example", loopback)
    assert host_allowed("anything", default_trusted_hosts("0.0.0.0"))
    assert host_allowed("annotate.example.org", ["annotate.example.org"])


@pytest.fixture()
def client():
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    def reply(status, message):
        return JSONResponse({"detail": message}, status_code=status)

    wrapped = limit_requests(app, reply, max_body_bytes=1000, max_json_depth=8,
                             trusted_hosts=default_trusted_hosts("127.0.0.1"))
    return TestClient(wrapped, base_url="http://127.0.0.1")


def test_the_body_reaches_the_app_whole(client):
    assert client.post("/echo", content=b"x" * 1000).json() == {"bytes": 1000}


def test_oversized_bodies_are_refused_by_length_and_by_stream(client):
    assert client.post("/echo", content=b"x" * 1001).status_code == 413
    chunks = (b"x" * 300 for _ in range(4))  # no Content-Length: counted while reading
    answer = client.post("/echo", content=chunks)
    assert answer.status_code == 413 and "1000 bytes" in answer.json()["detail"]
    assert client.post("/echo", content=b"{}", headers={"Content-Length": "abc"}).status_code == 400


def test_deep_json_and_foreign_hosts_are_refused(client):
    deep = b"[" * 9 + b"]" * 9
    for kind in ("application/json", "APPLICATION/JSON", None):
        headers = {"Content-Type": kind} if kind else {}
        assert client.post("/echo", content=deep, headers=headers).status_code == 400, kind
    assert client.post("/echo", content=b"[" * 8 + b"]" * 8, headers={"Content-Type": "application/json"}).status_code == 200
    answer = client.post("/echo", content=b"{}", headers={"Host": "rebound.example"})
    assert answer.status_code == 400 and "Host" in answer.json()["detail"]
