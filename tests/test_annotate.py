"""The annotation app through its HTTP API (FastAPI's test client, SQLite): the annotator's queue, sides,
undo, access control, CSRF, rate limits, verbatim storage, export that `alignkit rm` trains on, and the
CLI. Agreement statistics are in test_annotate_agreement.py, the browser in test_annotate_browser.py."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from alignkit.annotate import service  # noqa: E402
from alignkit.annotate.db import open_database  # noqa: E402
from alignkit.annotate.server import create_app  # noqa: E402
from alignkit.cli import main  # noqa: E402

INJECTION = "Robert'); DROP TABLE judgments;-- \" OR 1=1 --"
LOCAL = "http://127.0.0.1"  # the app answers only to trusted Host names, loopback by default
ODD = "Zero\u200bwidth, RTL \u202eabc, emoji 👩‍🔬, combining e\u0301, NUL-free \U0001F600, 中文, \\n literal"


def rows(n: int = 4) -> list[dict]:
    return [{"prompt": f"Question {i}?", "responses": [f"Answer {i} one", f"Answer {i} two"],
             "model": "secret-model-name", "category": "test"} for i in range(n)]


def jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)


@pytest.fixture()
def app_env(tmp_path):
    db = str(tmp_path / "a.db")
    _, Session = open_database(db)
    with Session() as session:
        _, admin_token = service.create_user(session, "boss", "admin", password="boss-pass")
        _, ann_token = service.create_user(session, "ann", "annotator", password="ann-pass")
        _, other_token = service.create_user(session, "other", "annotator")
    client = TestClient(create_app(db, rate=1000, burst=1000), base_url=LOCAL)
    return {"db": db, "client": client, "admin": {"Authorization": f"Bearer {admin_token}"},
            "ann": {"Authorization": f"Bearer {ann_token}"}, "other": {"Authorization": f"Bearer {other_token}"},
            "Session": Session}


def setup_project(env, items, per_item=1, name="p1", guidelines="Be kind."):
    client = env["client"]
    r = client.post("/api/admin/projects", json={"name": name, "guidelines": guidelines,
                                                 "annotators_per_item": per_item}, headers=env["admin"])
    assert r.status_code == 200, r.text
    r = client.post(f"/api/admin/projects/{name}/items", content=jsonl(items), headers=env["admin"])
    assert r.status_code == 200, r.text
    return r.json()["items"]


def judge_all(env, who, choice_for, name="p1"):
    client, seen = env["client"], []
    while True:
        nxt = client.get(f"/api/projects/{name}/next", headers=env[who]).json()
        if nxt["finished"]:
            return seen
        choice = choice_for(nxt)
        r = client.post(f"/api/assignments/{nxt['assignment_id']}/judgment",
                        json={"choice": choice, "strength": 2, "time_spent_ms": 1500}, headers=env[who])
        assert r.status_code == 200, r.text
        seen.append((nxt, choice))


def test_queue_sides_undo_and_majority_export(app_env, tmp_path):
    env, client = app_env, app_env["client"]
    assert setup_project(env, rows(40)) == 40
    first = client.get("/api/projects/p1/next", headers=env["ann"]).json()
    assert "secret-model-name" not in json.dumps(first) and first["guidelines"] == "Be kind."
    assert (first["judged"], first["remaining"]) == (0, 40)
    # asking again before answering gives the same comparison, not a new one
    assert client.get("/api/projects/p1/next", headers=env["ann"]).json()["assignment_id"] == first["assignment_id"]

    # the annotator always prefers the text ending in "one", wherever it is shown
    def prefer_one(nxt):
        return "left" if nxt["left"].endswith("one") else "right"

    judged = judge_all(env, "ann", prefer_one)
    assert len(judged) == 40
    lefts = {nxt["left"].endswith("one") for nxt, _ in judged}
    assert lefts == {True, False}, "sides must be randomised per assignment"

    # undo the last one (by its id): it comes back first, and can be judged differently
    last = judged[-1][0]
    last_id = client.get("/api/projects/p1/next", headers=env["ann"]).json()["last_judgment_id"]
    undone = client.post("/api/projects/p1/undo", json={"judgment_id": last_id}, headers=env["ann"])
    assert undone.json()["assignment_id"] == last["assignment_id"]
    # a retried undo deletes nothing more
    assert client.post("/api/projects/p1/undo", json={"judgment_id": last_id}, headers=env["ann"]).status_code == 404
    again = client.get("/api/projects/p1/next", headers=env["ann"]).json()
    assert again["assignment_id"] == last["assignment_id"] and (again["judged"], again["remaining"]) == (39, 1)
    client.post(f"/api/assignments/{again['assignment_id']}/judgment", json={"choice": "skip"}, headers=env["ann"])

    progress = client.get("/api/admin/projects/p1/progress", headers=env["admin"]).json()
    assert progress["judgments"] == 39 and progress["annotators"][0]["skips"] == 1
    assert progress["annotators"][0]["mean_seconds"] == pytest.approx(1.5, abs=0.1)
    exported = client.get("/api/admin/projects/p1/export", headers=env["admin"]).text.splitlines()
    prefs = [json.loads(line) for line in exported]
    assert len(prefs) == 39  # the skipped item has no vote
    assert all(p["chosen"].endswith("one") and p["rejected"].endswith("two") for p in prefs)
    assert all(p["margin"] == 2 and p["category"] == "test" and p["votes"] == 1 for p in prefs)

    # the export is valid preference data that alignkit rm trains on
    out = tmp_path / "prefs.jsonl"
    assert main(["annotate", "export", "--db", env["db"], "--project", "p1", "--out", str(out)]) == 0
    assert main(["data", "validate", str(out), "--kind", "preference"]) == 0
    assert main(["rm", "--model", "embedded:tiny", "--data", str(out), "--output_dir", str(tmp_path / "rm"),
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--progress", "false",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "rm" / "model").is_dir()


def test_annotators_per_item_and_majority_with_ties(app_env):
    env, client = app_env, app_env["client"]
    setup_project(env, rows(3), per_item=2)
    # two annotators take every item; a third finds nothing left
    judge_all(env, "ann", lambda nxt: "left" if nxt["left"].endswith("one") else "right")
    judge_all(env, "other", lambda nxt: "tie")
    with env["Session"]() as session:
        _, token = service.create_user(session, "late", "annotator")
    late = client.get("/api/projects/p1/next", headers={"Authorization": f"Bearer {token}"}).json()
    assert late["finished"] and late["remaining"] == 0
    # one vote "one wins", one vote tie: no majority, so nothing is exported by majority
    assert client.get("/api/admin/projects/p1/export", headers=env["admin"]).text == ""
    every = client.get("/api/admin/projects/p1/export?votes=all&ties=keep", headers=env["admin"]).text
    every = [json.loads(line) for line in every.splitlines()]
    assert len(every) == 6 and sum(bool(r.get("tie")) for r in every) == 3
    report = client.get("/api/admin/projects/p1/agreement", headers=env["admin"]).json()
    assert report["pairs"][0]["items"] == 3 and report["items_with_2_or_more_labels"] == 3


def test_every_admin_route_refuses_anonymous_and_annotators(app_env):
    env, client = app_env, app_env["client"]
    setup_project(env, rows(1))
    routes = client.app.state.admin_routes
    assert len(routes) >= 6
    for route in routes:
        path = route.replace("{name}", "p1")
        for method in ("get", "post"):
            anonymous = getattr(client, method)(path)
            if anonymous.status_code == 405:
                continue
            assert anonymous.status_code == 401, (method, path)
            assert getattr(client, method)(path, headers=env["ann"]).status_code == 403, (method, path)
            assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # an annotator cannot answer someone else's assignment
    nxt = client.get("/api/projects/p1/next", headers=env["ann"]).json()
    stolen = client.post(f"/api/assignments/{nxt['assignment_id']}/judgment", json={"choice": "left"},
                         headers=env["other"])
    assert stolen.status_code == 404


def test_cookie_sessions_need_the_csrf_token(app_env):
    env, client = app_env, app_env["client"]
    setup_project(env, rows(2))
    assert client.post("/api/login", json={"name": "ann", "password": "wrong"}).status_code == 401
    login = client.post("/api/login", json={"name": "ann", "password": "ann-pass"})
    assert login.status_code == 200 and "httponly" in login.headers["set-cookie"].lower()
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    csrf = login.json()["csrf"]
    nxt = client.get("/api/projects/p1/next").json()  # reads need no token
    path = f"/api/assignments/{nxt['assignment_id']}/judgment"
    assert client.post(path, json={"choice": "left"}).status_code == 403
    assert client.post(path, json={"choice": "left"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post(path, json={"choice": "left"}, headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.get("/api/me").json()["csrf"] == csrf


def test_injection_strings_and_odd_unicode_are_stored_and_exported_verbatim(app_env):
    env, client = app_env, app_env["client"]
    item = {"prompt": [{"role": "user", "content": INJECTION}], "responses": [ODD, "<script>alert(1)</script>"]}
    setup_project(env, [item], name=INJECTION[:40])
    name = INJECTION[:40]
    from urllib.parse import quote

    nxt = client.get(f"/api/projects/{quote(name, safe='')}/next", headers=env["ann"]).json()
    assert nxt["prompt"] == item["prompt"] and {nxt["left"], nxt["right"]} == set(item["responses"])
    choice = "left" if nxt["left"] == ODD else "right"
    client.post(f"/api/assignments/{nxt['assignment_id']}/judgment",
                json={"choice": choice, "reason": INJECTION + ODD}, headers=env["ann"])
    row = json.loads(client.get(f"/api/admin/projects/{quote(name, safe='')}/export", headers=env["admin"]).text)
    assert row["prompt"] == item["prompt"] and row["chosen"] == [{"role": "assistant", "content": ODD}]
    assert row["rejected"][0]["content"] == "<script>alert(1)</script>"
    with env["Session"]() as session:
        from sqlalchemy import select

        from alignkit.annotate.db import Judgment

        assert session.scalar(select(Judgment.reason)) == INJECTION + ODD
        assert session.scalar(select(Judgment.choice)) == "a"


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    db = str(tmp_path / "r.db")
    _, Session = open_database(db)
    with Session() as session:
        _, token = service.create_user(session, "fast", "annotator")
    client = TestClient(create_app(db, rate=1, burst=3), base_url=LOCAL)
    codes = [client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    limited = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert float(limited.headers["retry-after"]) > 0
    guesses = [client.post("/api/login", json={"name": "fast", "password": f"guess{i}"}).status_code
               for i in range(12)]
    assert guesses[:10] == [401] * 10 and guesses[10:] == [429, 429]  # password guessing is throttled


def test_pages_forbid_inline_script_and_never_insert_html(app_env):
    from pathlib import Path

    import alignkit.annotate as package

    page = app_env["client"].get("/")
    policy = page.headers["content-security-policy"]
    assert page.status_code == 200 and "script-src 'self'" in policy and "unsafe-inline" not in policy
    static = Path(package.__file__).parent / "static"
    for script in static.glob("*.js"):
        text = script.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    for page in static.glob("*.html"):
        assert "<script>" not in page.read_text()  # only src= scripts, which the policy allows


def test_cli_import_rejects_a_bad_file_without_importing_anything(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    assert main(["annotate", "create-project", "--db", db, "--name", "p"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(jsonl(rows(2)) + '{"prompt": "x", "responses": ["only one"]}\nnot json\n')
    assert main(["annotate", "import", "--db", db, "--project", "p", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: responses: expected a list of at least 2 responses" in err and f"{bad}:4:" in err
    assert main(["annotate", "report", "--db", db, "--project", "p"]) == 0
    assert json.loads(capsys.readouterr().out)["progress"]["items"] == 0
    assert main(["annotate", "import", "--db", db, "--project", "nope", str(bad)]) == 2


def test_migrations_bring_a_new_database_to_head_and_rerun_as_a_no_op(tmp_path):
    from sqlalchemy import inspect, text

    engine, _ = open_database(str(tmp_path / "m.db"))
    tables = set(inspect(engine).get_table_names())
    assert {"users", "projects", "items", "assignments", "judgments", "alembic_version"} <= tables
    engine, _ = open_database(str(tmp_path / "m.db"))
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == "0002"
        assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
