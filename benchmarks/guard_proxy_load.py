"""Load check of the guard proxy (issue 19): does its memory stay bounded over many distinct clients and prompts?

The proxy's ASGI app runs in this process with an in-process stub upstream (no network), 20,000 chat requests
are sent through it, each with its own prompt and its own client key (all keys valid: the rate-limit table and
anything keyed on the caller sees 20,000 identities), and the process's resident set size (RSS, from
/proc/self/statm) is read before, every 2,000 requests, and after. The guard is `none` by default (deny-lists,
PII redaction, rate limit, audit off); `--guard default` adds the built-in guard classifier, which embeds every
prompt and reply (its embedding cache holds 10,000 texts, so its growth is part of the figure).
It also times PII redaction and the deny-list on 1 MB adversarial inputs (long runs of email- and phone-like
characters). CPU only; prints a table and writes the raw numbers to benchmarks/results/guard_proxy_load.json.

    python benchmarks/guard_proxy_load.py [--requests 20000] [--guard none|default]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time

from starlette.testclient import TestClient

from alignkit.safety.filters import DenyList, redact_pii
from alignkit.safety.guardrails import Guardrails, GuardrailsConfig
from alignkit.safety.proxy import create_app
from alignkit.safety.proxy_cli import load_guard

REPLY = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "a short answer, mail me at a@b.co"},
     "finish_reason": "stop"}], "usage": {"total_tokens": 9}}).encode()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def forward(method, url, body, authorization, deadline_s, max_reply_bytes):
    return 200, REPLY


def load(requests: int, guard_name: str = "none") -> dict:
    keys = [f"key-{i:06d}-{os.urandom(8).hex()}" for i in range(requests)]
    table = {hashlib.sha256(k.encode()).hexdigest(): f"client{i}" for i, k in enumerate(keys)}
    rails = Guardrails(None, load_guard(guard_name), GuardrailsConfig(deny_keywords=["forbidden"], rate=1000, burst=1000,
                                                    redact_pii_inputs=True))
    app = create_app("http://upstream.invalid", rails, client_keys=table, forward=forward)
    marks = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for i in range(200):  # warm-up: imports, first allocations
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "warm"}]},
                        headers={"Authorization": f"Bearer {keys[i]}"})
        gc.collect()
        start_rss, start = rss_mb(), time.perf_counter()
        for i, key in enumerate(keys):
            prompt = f"request {i}: {os.urandom(12).hex()} call 555-{i % 1000:03d}-{i % 10000:04d} please"
            response = client.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "system", "content": f"session {i}"}, {"role": "user", "content": prompt}]},
                headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            if (i + 1) % 2000 == 0:
                gc.collect()
                marks.append({"requests": i + 1, "rss_mb": round(rss_mb(), 1)})
        elapsed = time.perf_counter() - start
    gc.collect()
    return {"requests": requests, "rss_start_mb": round(start_rss, 1), "rss_end_mb": round(rss_mb(), 1),
            "rss_growth_mb": round(rss_mb() - start_rss, 1), "marks": marks, "seconds": round(elapsed, 2),
            "requests_per_s": round(requests / elapsed, 1), "rate_limit_table": rails.limiter.size}


def adversarial(size: int = 1 << 20) -> dict:
    inputs = {"email-like": ("a.b-c_d%" * (size // 8))[:size], "at-signs": ("a@" * (size // 2))[:size],
              "digits": ("1 2-3." * (size // 6))[:size], "phone-like": ("+1 (555) 12" * (size // 11))[:size],
              "zero-width": ("z\u200b" * (size // 2))[:size]}
    deny = DenyList([r"api[_-]?key\s*=\s*\w+"], ["forbidden", "zorblax"])
    out = {}
    for name, text in inputs.items():
        start = time.perf_counter()
        redact_pii(text)
        redact_s = time.perf_counter() - start
        start = time.perf_counter()
        deny.search(text)
        out[name] = {"redact_s": round(redact_s, 3), "denylist_s": round(time.perf_counter() - start, 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--guard", default="none", help="none (rails only) or default (the built-in guard classifier "
                        "reads every prompt and reply: its embedding cache is in the measurement)")
    args = parser.parse_args()
    result = {"machine": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "device": "cpu", "guard": args.guard, "load": load(args.requests, args.guard), "adversarial_1mb": adversarial()}
    load_result = result["load"]
    print(f"{load_result['requests']} requests, unique prompts and client keys, {load_result['seconds']} s "
          f"({load_result['requests_per_s']}/s): RSS {load_result['rss_start_mb']} -> {load_result['rss_end_mb']} MB "
          f"(+{load_result['rss_growth_mb']} MB); rate-limit table {load_result['rate_limit_table']} keys")
    for mark in load_result["marks"]:
        print(f"  after {mark['requests']:>6}: RSS {mark['rss_mb']} MB")
    for name, times in result["adversarial_1mb"].items():
        print(f"1 MB {name:<11} redact {times['redact_s']:.3f} s, deny-list {times['denylist_s']:.3f} s")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        "guard_proxy_load.json" if args.guard == "none" else f"guard_proxy_load_{args.guard}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
