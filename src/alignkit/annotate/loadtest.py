"""A bounded loopback load test of the annotation server: N annotators at once, each taking and judging
K items, timing every request. Used by the tests (SQLite and PostgreSQL, and a kill -9 in the middle)
and runnable by hand against a fresh database:

    python -m alignkit.annotate.loadtest --db /tmp/load.db --annotators 50 --judgments 20
    python -m alignkit.annotate.loadtest --db postgresql://localhost/alignkit_load

`prepare` creates the users and a project of N·K items (one annotator per item, so every judgment needs a
different item and the annotators compete for them); `run_load` drives a server that is already running.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from alignkit.annotate import service
from alignkit.annotate.db import Judgment, open_database


@dataclass
class LoadResult:
    acknowledged: list[int] = field(default_factory=list)  # judgment ids the server confirmed
    latencies: list[float] = field(default_factory=list)  # seconds, every request
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def prepare(db: str, annotators: int, judgments: int, project: str = "load") -> list[str]:
    """Users load0..loadN-1 and a project of annotators × judgments items; returns their tokens."""
    _, Session = open_database(db)
    with Session() as session:
        tokens = [service.create_user(session, f"load{i}", "annotator")[1] for i in range(annotators)]
        target = service.create_project(session, project, "Load test.", 1)
        rows = [{"prompt": f"Load prompt {i}", "responses": [f"first {i}", f"second {i}"]}
                for i in range(annotators * judgments)]
        service.import_items(session, target, rows)
    return tokens


def run_load(url: str, tokens: list[str], judgments: int, project: str = "load",
             stop: threading.Event | None = None) -> LoadResult:
    """Every token's annotator takes and judges `judgments` items at once; stops early (no error recorded)
    when `stop` is set, e.g. because the server was killed on purpose."""
    import httpx

    result, lock = LoadResult(), threading.Lock()
    stop = stop or threading.Event()

    def annotator(token: str):
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(judgments):
                if stop.is_set():
                    return
                try:
                    t0 = time.perf_counter()
                    nxt = client.get(f"/api/projects/{project}/next")
                    t1 = time.perf_counter()
                    nxt.raise_for_status()
                    body = nxt.json()
                    if body["finished"]:
                        raise RuntimeError("queue finished early")
                    answer = client.post(f"/api/assignments/{body['assignment_id']}/judgment",
                                         json={"choice": "left", "time_spent_ms": 10})
                    t2 = time.perf_counter()
                    answer.raise_for_status()
                    with lock:
                        result.latencies += [t1 - t0, t2 - t1]
                        result.acknowledged.append(answer.json()["judgment_id"])
                except Exception as error:  # noqa: BLE001 (every failure is a finding of the load test)
                    if not stop.is_set():
                        with lock:
                            result.errors.append(f"{type(error).__name__}: {error}")
                    return

    threads = [threading.Thread(target=annotator, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int) -> subprocess.Popen:
    """`alignkit annotate serve` in a subprocess (rate limits raised for the test), ready when it returns."""
    import httpx

    command = [sys.executable, "-m", "alignkit.cli", "annotate", "serve", "--db", db, "--port", str(port),
               "--rate", "1000", "--burst", "1000"]
    env = dict(os.environ)
    env.setdefault("ALIGNKIT_SESSION_SECRET", secrets.token_hex(32))  # PostgreSQL needs one; tokens don't use it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/me", timeout=1).status_code == 401:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start within 60 s")


def stored_judgments(db: str) -> list[tuple[int, int, int]]:
    """(judgment id, assignment id, item id) of every stored judgment."""
    from sqlalchemy import select

    _, Session = open_database(db)
    with Session() as session:
        return [tuple(r) for r in session.execute(select(Judgment.id, Judgment.assignment_id, Judgment.item_id))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="a fresh SQLite file or PostgreSQL URL")
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--judgments", type=int, default=20)
    args = parser.parse_args(argv)
    tokens = prepare(args.db, args.annotators, args.judgments)
    port = free_port()
    server = start_server(args.db, port)
    try:
        started = time.perf_counter()
        result = run_load(f"http://127.0.0.1:{port}", tokens, args.judgments)
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    stored = stored_judgments(args.db)
    print(json.dumps({"annotators": args.annotators, "judgments_each": args.judgments,
                      "acknowledged": len(result.acknowledged), "stored": len(stored),
                      "distinct_items": len({s[2] for s in stored}), "errors": len(result.errors),
                      "p50_ms": round(result.percentile(0.5) * 1000, 1),
                      "p95_ms": round(result.percentile(0.95) * 1000, 1), "seconds": round(seconds, 1)}))
    return 0 if not result.errors and len(stored) == args.annotators * args.judgments else 1


if __name__ == "__main__":
    sys.exit(main())
