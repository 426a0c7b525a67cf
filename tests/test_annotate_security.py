"""The annotation app under attack (issue 19): sessions that cannot be forged from the database and end on
logout, a new password, a new token or disabling; private database files; login that costs the same for
unknown names; idempotent undo, 409 on a changed answer, skips that never over-fill; bad input that gets
a one-line 4xx, never a 500 (with a hypothesis fuzz of every route); and the CLI's new commands."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import random
import stat
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from alignkit.annotate import accounts, service  # noqa: E402
from alignkit.annotate.db import Assignment, Item, Judgment, User, open_database, shown_url  # noqa: E402
from alignkit.annotate.server import COOKIE, create_app  # noqa: E402
from alignkit.annotate.sessions import SECRET_ENV, server_secret  # noqa: E402
from alignkit.cli import main  # noqa: E402
from alignkit.errors import AlignkitError  # noqa: E402

LOCAL = "http://127.0.0.1"
PAGES = ("/", "/admin")  # static pages: public by design, they hold no data


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def env(tmp_path):
    db = str(tmp_path / "s.db")
    _, Session = open_database(db)
    with Session() as session:
        _, admin = service.create_user(session, "boss", "admin", password="boss-pass")
        _, ann = service.create_user(session, "ann", "annotator", password="ann-pass")
        project = service.create_project(session, "p1", "Be kind.", 1)
        service.import_items(session, project, [{"prompt": f"Q{i}?", "responses": [f"A{i} one", f"A{i} two"]}
                                                for i in range(6)])
    return {"db": db, "Session": Session, "admin": bearer(admin), "ann": bearer(ann),
            "client": TestClient(create_app(db, rate=0), base_url=LOCAL)}


def log_in(client, name="ann", password="ann-pass") -> tuple[str, str]:
    """(cookie, csrf) of a fresh login; the client's own cookie jar is emptied so tests send cookies by hand."""
    response = client.post("/api/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    cookie = response.cookies[COOKIE]
    client.cookies.clear()
    return cookie, response.json()["csrf"]


def with_cookie(cookie: str, csrf: str | None = None) -> dict:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    if csrf:
        headers["X-CSRF-Token"] = csrf
    return headers


def one_line_refusal(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.strip(), response.text
    return detail


# -- sessions --------------------------------------------------------------------------------------------


def test_a_cookie_minted_from_the_database_is_refused(env):
    client = env["client"]
    cookie, _ = log_in(client)
    assert client.get("/api/me", headers=with_cookie(cookie)).status_code == 200
    with env["Session"]() as session:
        row = session.scalar(select(User).where(User.name == "ann"))
    expires = int(time.time()) + 3600
    forged = []
    for key in (row.token_hash, row.password_hash, row.name):  # everything an attacker reads in the file
        old = f"{row.id}.{expires}"  # the scheme before issue 19: HMAC(token_hash, "id.expiry")
        forged.append(f"{old}.{hmac.new(key.encode(), old.encode(), hashlib.sha256).hexdigest()}")
        new = f"{row.id}.{row.session_version}.{expires}"
        for text in (new, "session:" + new):
            forged.append(f"{new}.{hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()}")
    for fake in forged:
        assert client.get("/api/me", headers=with_cookie(fake)).status_code == 401, fake
    # the signature covers every field: the real cookie with another user id or a later expiry is refused
    user_id, version, expiry, signature = cookie.split(".")
    for changed in (f"1.{version}.{expiry}.{signature}", f"{user_id}.{version}.{int(expiry) + 1}.{signature}"):
        assert client.get("/api/me", headers=with_cookie(changed)).status_code == 401


def test_after_logout_the_old_cookie_gets_401(env):
    client = env["client"]
    cookie, csrf = log_in(client)
    other_browser, _ = log_in(client)
    assert client.post("/api/logout", headers=with_cookie(cookie)).status_code == 403  # CSRF still needed
    response = client.post("/api/logout", headers=with_cookie(cookie, csrf))
    assert response.status_code == 200 and 'alignkit_session=""' in response.headers["set-cookie"]
    for old in (cookie, other_browser):  # logout ends the user's sessions in every browser
        refused = client.get("/api/me", headers=with_cookie(old))
        assert refused.status_code == 401 and one_line_refusal(refused)
    assert client.get("/api/me", headers=env["ann"]).status_code == 200  # the token is not a session
    fresh, _ = log_in(client)
    assert client.get("/api/me", headers=with_cookie(fresh)).status_code == 200


def test_new_password_and_new_token_end_sessions(env):
    client = env["client"]
    cookie, csrf = log_in(client)
    rotated = client.post("/api/admin/users/ann/rotate-token", headers=env["admin"])
    assert rotated.status_code == 200
    assert client.get("/api/me", headers=env["ann"]).status_code == 401
    assert client.get("/api/me", headers=with_cookie(cookie)).status_code == 401
    assert client.get("/api/me", headers=bearer(rotated.json()["token"])).status_code == 200

    cookie, csrf = log_in(client)
    assert client.post("/api/admin/users/ann/password", json={"password": "short"},
                       headers=env["admin"]).status_code == 400
    assert client.post("/api/admin/users/ann/password", json={"password": "a new passphrase"},
                       headers=env["admin"]).status_code == 200
    assert client.get("/api/me", headers=with_cookie(cookie)).status_code == 401
    cookie, csrf = log_in(client, password="a new passphrase")

    # a user's own change needs the old password; the caller's cookie is replaced, every other one ends
    wrong = client.post("/api/me/password", json={"old_password": "not it at all", "new_password": "another one!"},
                        headers=with_cookie(cookie, csrf))
    assert wrong.status_code == 403 and "old_password" in one_line_refusal(wrong)
    changed = client.post("/api/me/password", json={"old_password": "a new passphrase",
                                                    "new_password": "another one!"}, headers=with_cookie(cookie, csrf))
    assert changed.status_code == 200
    renewed = changed.cookies[COOKIE]
    client.cookies.clear()
    assert client.get("/api/me", headers=with_cookie(cookie)).status_code == 401
    assert client.get("/api/me", headers=with_cookie(renewed)).json()["csrf"] == changed.json()["csrf"]
    assert client.post("/api/login", json={"name": "ann", "password": "another one!"}).status_code == 200


def _every_api_call(app):
    """(method, path) of every API route, path parameters filled in."""
    from fastapi.routing import APIRoute

    for route in app.routes:
        if isinstance(route, APIRoute) and route.path not in PAGES:
            path = route.path.replace("{name}", "p1").replace("{assignment_id}", "1")
            for method in sorted(route.methods):
                yield method, path


def test_a_disabled_user_gets_401_on_every_route(env):
    client = env["client"]
    cookie, csrf = log_in(client)
    assert client.post("/api/admin/users/ann/disable", headers=env["admin"]).json()["disabled"] is True
    calls = list(_every_api_call(client.app))
    assert len(calls) >= 18
    for method, path in calls:
        if path == "/api/login":
            continue
        for headers in (env["ann"], with_cookie(cookie, csrf)):
            response = client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, response.text)
    for body in ({"name": "ann", "password": "ann-pass"}, {"token": env["ann"]["Authorization"][7:]}):
        assert client.post("/api/login", json=body).status_code == 401
    assert client.post("/api/admin/users/boss/disable", headers=env["admin"]).status_code == 409  # not yourself
    assert client.post("/api/admin/users/ann/enable", headers=env["admin"]).status_code == 200
    assert client.get("/api/me", headers=env["ann"]).status_code == 200
    assert client.get("/api/me", headers=with_cookie(cookie)).status_code == 401  # disabling ended it for good


@pytest.mark.parametrize("cookie", ["9" * 400, "99999999999999999999.0.9999999999.", "-1.0.1.x", "1.0.1." + "f" * 64,
                                    "a.b.c.d", "", "1..2.3", "\u00e9", "%00", "1.0.99999999999." + "0" * 64])
def test_odd_cookies_get_401_not_500(env, cookie):
    refused = env["client"].get("/api/me", headers={"Cookie": f"{COOKIE}={quote(cookie)}"})
    assert refused.status_code == 401 and one_line_refusal(refused)


# -- files and credentials ---------------------------------------------------------------------------------


def test_database_and_secret_files_are_0600(tmp_path):
    db = tmp_path / "private.db"
    engine, _ = open_database(str(db))
    server_secret(str(db))
    for path in (db, tmp_path / "private.db-wal", tmp_path / "private.db-shm", tmp_path / "private.db.secret"):
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    engine.dispose()
    # a database made world-readable before this version is tightened when opened
    loose = tmp_path / "old.db"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    open_database(str(loose))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert server_secret(str(db)) == server_secret(str(db))  # kept, not remade


def test_session_secret_from_the_environment_and_required_for_postgres(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(AlignkitError, match=SECRET_ENV):
        server_secret("postgresql://user:pw@localhost/db")
    monkeypatch.setenv(SECRET_ENV, "too short")
    with pytest.raises(AlignkitError, match="at least 32"):
        server_secret(str(tmp_path / "x.db"))
    monkeypatch.setenv(SECRET_ENV, "x" * 40)
    assert server_secret("postgresql://user:pw@localhost/db") == b"x" * 40
    assert not (tmp_path / "x.db.secret").exists()


def test_login_runs_scrypt_for_unknown_names_too(env, monkeypatch):
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(accounts.hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    client = env["client"]
    with env["Session"]() as session:
        service.create_user(session, "token-only", "annotator")  # has no password at all
    accounts._dummy_hash()  # computed once, up front (not part of any login)
    for name in ("nobody-by-this-name", "ann", "token-only"):
        calls.clear()
        assert client.post("/api/login", json={"name": name, "password": "wrong guess"}).status_code == 401
        assert len(calls) == 1, name


def test_a_database_from_before_sessions_is_migrated_and_its_users_keep_working(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    import alignkit.annotate.db as db_module

    db = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{db}")
    config = Config()
    config.set_main_option("script_location", os.path.join(os.path.dirname(db_module.__file__), "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        salt = os.urandom(16)
        digest = hashlib.scrypt(b"old passphrase", salt=salt, n=2**14, r=8, p=1, dklen=32)
        old_hash = f"scrypt${salt.hex()}${digest.hex()}"  # before issue 19: no parameters stored
        connection.execute(text("insert into users (name, role, password_hash, token_hash, created_at) "
                                "values ('old', 'annotator', :h, :t, '2024-01-01')"),
                           {"h": old_hash, "t": accounts.token_hash("old-token")})
    engine.dispose()
    _, Session = open_database(str(db))
    with Session() as session:
        user = accounts.user_by_password(session, "old", "old passphrase")
        assert user is not None and user.session_version == 0 and user.disabled is False
        assert accounts.user_by_token(session, "old-token").name == "old"


def test_scrypt_parameters_are_stored_and_old_hashes_still_verify():
    stored = accounts.hash_password("correct horse")
    assert stored.startswith("scrypt$n=16384,r=8,p=1$") and accounts.check_password("correct horse", stored)
    salt = os.urandom(16)
    digest = hashlib.scrypt(b"old one", salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = f"scrypt${salt.hex()}${digest.hex()}"  # what rows from before issue 19 hold
    assert accounts.check_password("old one", old) and not accounts.check_password("old two", old)
    cheap = accounts.hash_password("x" * 8, n=2**10, r=4, p=1)
    assert accounts.check_password("x" * 8, cheap)
    for bad in ("scrypt$n=3,r=8,p=1$00$00", "scrypt$n=1073741824,r=8,p=1$00$00", "bcrypt$x", "scrypt$zz$zz", ""):
        assert not accounts.check_password("anything", bad)


# -- judgments ---------------------------------------------------------------------------------------------


def test_a_different_answer_to_a_judged_assignment_is_409(env):
    client = env["client"]
    nxt = client.get("/api/projects/p1/next", headers=env["ann"]).json()
    path = f"/api/assignments/{nxt['assignment_id']}/judgment"
    first = client.post(path, json={"choice": "left", "time_spent_ms": 5}, headers=env["ann"])
    again = client.post(path, json={"choice": "left", "time_spent_ms": 9}, headers=env["ann"])
    assert first.json()["created"] and again.status_code == 200 and not again.json()["created"]
    assert again.json()["judgment_id"] == first.json()["judgment_id"]
    other = client.post(path, json={"choice": "right"}, headers=env["ann"])
    assert other.status_code == 409 and "undo" in one_line_refusal(other)
    with env["Session"]() as session:
        assert session.scalar(select(func.count(Judgment.id))) == 1


def test_undo_names_the_judgment_and_a_retry_deletes_nothing_more(env):
    client = env["client"]
    ids = []
    for _ in range(2):
        nxt = client.get("/api/projects/p1/next", headers=env["ann"]).json()
        ids.append(client.post(f"/api/assignments/{nxt['assignment_id']}/judgment", json={"choice": "tie"},
                               headers=env["ann"]).json()["judgment_id"])
    assert client.get("/api/projects/p1/next", headers=env["ann"]).json()["last_judgment_id"] == ids[1]
    assert client.post("/api/projects/p1/undo", json={"judgment_id": ids[1]}, headers=env["ann"]).status_code == 200
    retry = client.post("/api/projects/p1/undo", json={"judgment_id": ids[1]}, headers=env["ann"])
    assert retry.status_code == 404 and "already undone" in one_line_refusal(retry)
    missing = client.post("/api/projects/p1/undo", headers=env["ann"])  # the old body-less form is gone
    assert missing.status_code == 422 and one_line_refusal(missing)
    assert client.post("/api/projects/p1/undo", json={"judgment_id": ids[0]}, headers=env["admin"]).status_code == 404
    with env["Session"]() as session:
        assert list(session.scalars(select(Judgment.id))) == [ids[0]]


def test_undoing_a_skip_whose_slot_was_taken_keeps_the_skip(env):
    with env["Session"]() as session:
        project = service.project_by_name(session, "p1")
        ann = accounts.user_by_name(session, "ann")
        boss = accounts.user_by_name(session, "boss")
        first = service.next_assignment(session, ann, project)
        skip, _ = service.submit_judgment(session, ann, first.id, "skip")
        # the skipped item goes back to the pool; give boss every item, so he takes that slot too
        while service.next_assignment(session, boss, project) is not None:
            service.submit_judgment(session, boss, service.next_assignment(session, boss, project).id, "left")
        with pytest.raises(service.Conflict, match="skip stays"):
            service.undo_judgment(session, ann, project, skip.id)
        session.expire_all()
        assert session.get(Item, first.item_id).taken == 1 and session.get(Judgment, skip.id) is not None


def _check_taken(Session, per_item: int) -> None:
    """taken is the item's assignments less its skips, and never more than annotators_per_item."""
    with Session() as session:
        for item in session.scalars(select(Item)):
            assigned = session.scalar(select(func.count(Assignment.id)).where(Assignment.item_id == item.id))
            skipped = session.scalar(select(func.count(Judgment.id)).where(Judgment.item_id == item.id,
                                                                            Judgment.choice == "skip"))
            assert item.taken == assigned - skipped and 0 <= item.taken <= per_item, item.id


@pytest.fixture(params=["sqlite", "postgresql"])
def race_db(request, tmp_path):
    """A fresh database: a SQLite file, or one on ALIGNKIT_TEST_POSTGRES_URL's server (.ci/services)."""
    if request.param == "sqlite":
        yield str(tmp_path / "race.db")
        return
    server = os.environ.get("ALIGNKIT_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("ALIGNKIT_TEST_POSTGRES_URL is not set (.ci/services starts a PostgreSQL and sets it)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import close_all_sessions

    from alignkit.annotate.db import normalise_url

    name = f"alignkit_race_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    admin = create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'create database "{name}"'))
    try:
        yield normalise_url(server).rsplit("/", 1)[0] + "/" + name
    finally:
        close_all_sessions()
        with admin.connect() as connection:
            connection.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def test_concurrent_skips_and_undos_never_overfill_an_item(race_db):
    _, Session = open_database(race_db)
    with Session() as session:
        users = [service.create_user(session, f"u{i}", "annotator")[0] for i in range(8)]
        project = service.create_project(session, "race", "", 2)
        service.import_items(session, project, [{"prompt": f"Q{i}", "responses": ["x", "y"]} for i in range(5)])
    outcomes, errors = [], []

    def annotator(user, seed):
        rng = random.Random(seed)
        with Session() as session:
            try:
                for _ in range(25):
                    assignment = service.next_assignment(session, user, project, rng)
                    if assignment is None:
                        break
                    judgment, _ = service.submit_judgment(session, user, assignment.id, rng.choice(["skip", "left"]))
                    if rng.random() < 0.6:
                        try:
                            service.undo_judgment(session, user, project, judgment.id)
                            outcomes.append("undone")
                        except service.Conflict:
                            outcomes.append("conflict")
            except Exception as error:  # noqa: BLE001 (any error fails the test below)
                errors.append(repr(error))

    threads = [threading.Thread(target=annotator, args=(user, i)) for i, user in enumerate(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{race_db.split(':')[0]}: {dict(Counter(outcomes))}")  # both ways an undo of a skip can end
    assert errors == [] and "undone" in outcomes
    _check_taken(Session, per_item=2)


# -- bad input, limits and hosts ---------------------------------------------------------------------------


def test_bad_input_gets_a_one_line_4xx(env):
    client = env["client"]
    nxt = client.get("/api/projects/p1/next", headers=env["ann"]).json()
    path = f"/api/assignments/{nxt['assignment_id']}/judgment"
    refused = [
        client.post(path, json={"choice": "left", "time_spent_ms": 10**30}, headers=env["ann"]),
        client.post(path, json={"choice": "left", "time_spent_ms": 25 * 3600 * 1000}, headers=env["ann"]),
        client.post(path, json={"choice": "left", "reason": "nul\u0000"}, headers=env["ann"]),
        client.post(path, content=b'{"choice": "left", "reason": "\\ud800"}',
                    headers={**env["ann"], "content-type": "application/json"}),
        client.post(path, json={"choice": "sideways"}, headers=env["ann"]),
        client.post(path, content=b"[" * 100_000, headers={**env["ann"], "content-type": "application/json"}),
        client.post(path, content=b"x" * (2 << 20), headers=env["ann"]),
        client.post("/api/assignments/99999999999999999999/judgment", json={"choice": "left"}, headers=env["ann"]),
        client.post("/api/assignments/-1/judgment", json={"choice": "left"}, headers=env["ann"]),
        client.get("/api/projects/" + "x" * 5000 + "/next", headers=env["ann"]),
        client.get("/api/admin/projects/p1/export?votes=every", headers=env["admin"]),
        client.post("/api/admin/projects", json={"name": "big", "annotators_per_item": 2**40}, headers=env["admin"]),
        client.get("/api/me", headers={**env["ann"], "host": "evil.example"}),
    ]
    for response in refused:
        assert 400 <= response.status_code < 500, response.text
        one_line_refusal(response)
    assert [r.status_code for r in refused[5:7]] == [400, 413]
    assert client.post(path, json={"choice": "left", "time_spent_ms": 3000}, headers=env["ann"]).status_code == 200


@pytest.mark.parametrize("row, why", [
    ({"prompt": 5, "responses": ["a", "b"]}, "prompt"),
    ({"prompt": [{"role": "user"}], "responses": ["a", "b"]}, "prompt[0]"),
    ({"prompt": [], "responses": ["a", "b"]}, "prompt"),
    ({"prompt": "p", "responses": ["a", 7]}, "responses"),
    ({"prompt": "p", "responses": ["a"] * 40}, "responses"),
    ({"prompt": "p", "responses": ["a", "b"], "models": ["m"]}, "models"),
    ({"prompt": "p", "responses": ["a", "b"], "model": "m" * 400}, "models"),
    ({"prompt": "p", "chosen": {"x": 1}, "rejected": "r"}, "chosen"),
    ({"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": None}]}, "rejected[0]"),
    ({"prompt": "p", "responses": ["a", "b"], "note": "nul \u0000"}, "NUL"),
    ({"prompt": "x" * (1 << 20), "responses": ["a", "b"]}, "longer than"),
    ([1, 2], "JSON object"),
])
def test_malformed_import_rows_are_422_with_the_line_and_field(env, row, why):
    body = json.dumps({"prompt": "fine", "responses": ["a", "b"]}) + "\n" + json.dumps(row) + "\n"
    response = env["client"].post("/api/admin/projects/p1/items", content=body.encode(), headers=env["admin"])
    assert response.status_code == 422 and why in one_line_refusal(response) and "line 2" in response.text


def test_import_rows_with_nan_or_deep_nesting_are_refused(env):
    for line in ('{"prompt": "p", "responses": ["a", "b"], "x": NaN}',
                 '{"prompt": "p", "responses": ["a", "b"], "x": ' + "[" * 70 + "]" * 70 + "}"):
        response = env["client"].post("/api/admin/projects/p1/items", content=line.encode(),
                                      headers={**env["admin"], "content-type": "text/plain"})
        assert response.status_code == 422 and one_line_refusal(response)


def test_the_larger_import_cap_is_for_admins_only(tmp_path):
    db = str(tmp_path / "cap.db")
    _, Session = open_database(db)
    with Session() as session:
        _, admin = service.create_user(session, "boss", "admin")
        _, ann = service.create_user(session, "ann", "annotator")
        service.create_project(session, "p1")
    client = TestClient(create_app(db, max_body_bytes=2000, max_import_bytes=200_000), base_url=LOCAL)
    body = "".join(json.dumps({"prompt": f"Q{i}", "responses": ["a", "b"]}) + "\n" for i in range(200)).encode()
    assert len(body) > 2000
    assert client.post("/api/admin/projects/p1/items", content=body, headers=bearer(ann)).status_code == 413
    assert client.post("/api/admin/projects/p1/items", content=body).status_code == 413
    assert client.post("/api/admin/projects/p1/items", content=body, headers=bearer(admin)).json() == {"items": 200}
    assert client.post("/api/admin/projects", content=b" " * 3000, headers=bearer(admin)).status_code == 413


def test_rate_zero_means_no_limit(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    _, Session = open_database(db)
    with Session() as session:
        _, token = service.create_user(session, "fast", "annotator")
    client = TestClient(create_app(db, rate=0, burst=1), base_url=LOCAL)
    assert {client.get("/api/me", headers=bearer(token)).status_code for _ in range(30)} == {200}
    assert main(["annotate", "serve", "--db", db, "--rate", "-1"]) == 2
    assert "--rate" in capsys.readouterr().err


# -- the CLI -----------------------------------------------------------------------------------------------


def test_cli_user_commands(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "cli.db")
    monkeypatch.setenv("ALIGNKIT_DB_URL", db)  # --db falls back to the environment
    monkeypatch.setattr("sys.stdin", io.StringIO("first passphrase\n"))
    assert main(["annotate", "add-user", "--name", "ann", "--password_stdin"]) == 0
    token = capsys.readouterr().out.split("token ")[1].split()[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("second passphrase\n"))
    assert main(["annotate", "set-password", "--name", "ann"]) == 0
    assert main(["annotate", "rotate-token", "--name", "ann"]) == 0
    new_token = capsys.readouterr().out.split("new token ")[1].split()[0]
    assert main(["annotate", "disable-user", "--name", "ann"]) == 0
    _, Session = open_database(db)
    with Session() as session:
        assert accounts.user_by_token(session, new_token) is None and accounts.user_by_token(session, token) is None
        assert accounts.user_by_password(session, "ann", "second passphrase") is None
    assert main(["annotate", "enable-user", "--name", "ann"]) == 0
    with Session() as session:
        assert accounts.user_by_token(session, new_token).name == "ann"
        assert accounts.user_by_password(session, "ann", "second passphrase").name == "ann"
        assert accounts.user_by_password(session, "ann", "first passphrase") is None
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["annotate", "set-password", "--name", "ann"]) == 2
    assert main(["annotate", "rotate-token", "--name", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "stdin" in err and "no user called 'nobody'" in err


def test_serve_masks_the_password_and_warns_without_tls(tmp_path, monkeypatch, capsys):
    import alignkit.annotate.server as server

    started = {}
    monkeypatch.setattr(server, "serve", lambda *args: started.update(args=args))
    db = str(tmp_path / "serve.db")
    monkeypatch.setenv("ALIGNKIT_DB_URL", db)
    assert main(["annotate", "serve", "--host", "0.0.0.0", "--trusted_hosts", "annotate.example.org"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "TLS" in err and started["args"][0] == db
    assert started["args"][7] == ["annotate.example.org"]
    assert main(["annotate", "serve", "--db", db]) == 0 and "warning" not in capsys.readouterr().err
    assert main(["annotate", "serve", "--db", db, "--ssl_certfile", db]) == 2  # the key is missing
    assert shown_url("postgresql://alice:hunter2@db.example/annotations") == \
        "postgresql://alice:***@db.example/annotations"


# -- the route fuzz ----------------------------------------------------------------------------------------

ROUTES = [("GET", "/"), ("GET", "/admin"), ("GET", "/static/common.js"), ("GET", "/static/../f.db"),
          ("GET", "/nope"), ("POST", "/api/login"), ("POST", "/api/logout"), ("GET", "/api/me"),
          ("POST", "/api/me/password"), ("GET", "/api/projects"), ("GET", "/api/projects/{name}/next"),
          ("POST", "/api/assignments/{id}/judgment"), ("POST", "/api/projects/{name}/undo"),
          ("GET", "/api/admin/users"), ("POST", "/api/admin/users"), ("POST", "/api/admin/users/{user}/password"),
          ("POST", "/api/admin/users/{user}/rotate-token"), ("POST", "/api/admin/users/{user}/disable"),
          ("POST", "/api/admin/users/{user}/enable"), ("POST", "/api/admin/projects"),
          ("POST", "/api/admin/projects/{name}/items"), ("GET", "/api/admin/projects/{name}/progress"),
          ("GET", "/api/admin/projects/{name}/agreement"), ("GET", "/api/admin/projects/{name}/export"),
          ("GET", "/api/admin/projects/{name}/export?votes=all&ties=keep")]
RARELY = st.sampled_from([False] * 9 + [True])  # st.integers would favour its edges
odd_text = st.text(st.characters(codec="utf-8"), max_size=30)
lone_surrogates = st.characters(categories=["Cs"]).map(lambda c: "x" + c)  # json.dumps escapes them: \udXXX
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | odd_text | lone_surrogates,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
                           max_leaves=12)
shaped = st.fixed_dictionaries({}, optional={
    key: st.one_of(json_values, st.integers(-2**70, 2**70), odd_text)
    for key in ("name", "password", "token", "choice", "strength", "reason", "time_spent_ms", "judgment_id",
                "role", "guidelines", "annotators_per_item", "old_password", "new_password", "prompt", "responses")})
answers = st.fixed_dictionaries(
    {"choice": st.sampled_from(["left", "right", "tie", "both_bad", "skip", "a"]) | odd_text},
    optional={"strength": st.integers(-5, 5) | st.integers(),
              "time_spent_ms": st.integers(0, 2**31) | st.integers() | st.floats(),
              "reason": odd_text | lone_surrogates})
rows = st.fixed_dictionaries({"prompt": json_values}, optional={
    "responses": st.lists(json_values | odd_text, max_size=5), "model": json_values, "models": json_values,
    "chosen": json_values, "rejected": json_values})
as_json = json.dumps
FOR_ROUTE = {  # bodies close to what each route takes, so the fuzz gets past the type checks
    "/judgment": answers.map(as_json),
    "/undo": st.fixed_dictionaries({"judgment_id": st.integers() | st.integers(1, 5)}).map(as_json),
    "/items": st.lists(rows, min_size=1, max_size=3).map(lambda rs: "\n".join(map(as_json, rs))),
    "/api/login": st.fixed_dictionaries({}, optional={"name": st.sampled_from(["ann", "boss"]) | odd_text,
                                                      "password": odd_text, "token": odd_text}).map(as_json),
    "/api/admin/projects": st.fixed_dictionaries({"name": odd_text}, optional={
        "annotators_per_item": st.integers(), "guidelines": odd_text | lone_surrogates}).map(as_json),
    "/api/admin/users": st.fixed_dictionaries({"name": odd_text}, optional={
        "role": st.sampled_from(["admin", "annotator", "root"]), "password": odd_text}).map(as_json),
    "password": st.fixed_dictionaries({}, optional={"password": odd_text, "old_password": odd_text,
                                                    "new_password": odd_text}).map(as_json),
}
targeted = st.one_of(answers, rows)
bodies = st.one_of(
    st.none(), st.binary(max_size=300), shaped.map(lambda v: json.dumps(v).encode()),
    targeted.map(lambda v: json.dumps(v).encode()), targeted.map(lambda v: json.dumps(v).encode()),
    st.lists(rows, max_size=3).map(lambda rs: "\n".join(map(json.dumps, rs)).encode()),
    json_values.map(lambda v: json.dumps(v).encode()), shaped.map(lambda v: json.dumps(v).encode()),
    st.integers(60, 5000).map(lambda n: b"[" * n + b"]" * n), st.just(b"x" * ((1 << 20) + 1)),
    st.lists(shaped, max_size=3).map(lambda rows: "\n".join(map(json.dumps, rows)).encode()))


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("fuzz") / "f.db")
    _, Session = open_database(db)
    with Session() as session:
        _, admin = service.create_user(session, "boss", "admin")
        _, ann = service.create_user(session, "ann", "annotator", password="ann-pass")
        service.create_user(session, "victim", "annotator")
        project = service.create_project(session, "p1", "", 2)
        service.import_items(session, project, [{"prompt": "Q", "responses": ["a", "b", "c"]}])
    return {"Session": Session, "admin": admin, "ann": ann,
            "client": TestClient(create_app(db, rate=0), base_url=LOCAL)}


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route[0]} {route[1]}")
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_route_fuzz_never_500s(fuzz_env, route, data):
    """Random methods, path parameters, bodies, headers and credentials on every route (80 cases each, 2,000
    in all): no 500, every refusal a one-line 4xx."""
    client = fuzz_env["client"]
    client.cookies.clear()
    method, path = route
    if data.draw(RARELY):
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    for slot, values in (("{name}", st.sampled_from(["p1", "p1", "nope", "x" * 300]) | odd_text),
                         ("{user}", st.sampled_from(["victim", "nobody"]) | odd_text),
                         ("{id}", st.sampled_from(["1", "2", "3", "0", "-5", "1e3", "9" * 30, str(2**31), str(2**63)])
                          | st.integers().map(str))):
        if slot in path:
            path = path.replace(slot, quote(data.draw(values), safe="") or "x")
    headers = {}
    with fuzz_env["Session"]() as session:  # the annotator's current cookie (earlier examples may have ended it)
        ann = session.scalar(select(User).where(User.name == "ann"))
        cookie = client.app.signer.cookie(ann)
    credential = data.draw(st.sampled_from(["admin", "ann", "cookie+csrf"] * 3
                                           + ["none", "garbage", "cookie", "forged"]))
    if credential in ("admin", "ann"):
        headers["Authorization"] = f"Bearer {fuzz_env[credential]}"
    elif credential == "garbage":
        headers["Authorization"] = data.draw(st.sampled_from(["Bearer ", "Bearer x", "Basic YTpi",
                                                              "bearer" + "A" * 300]))
    elif credential.startswith("cookie"):
        headers["Cookie"] = f"{COOKIE}={cookie}"
        if credential == "cookie+csrf":
            headers["X-CSRF-Token"] = client.app.signer.csrf(cookie)
    elif credential == "forged":
        headers["Cookie"] = f"{COOKIE}={quote(data.draw(odd_text))}; other=1"
    content_type = data.draw(st.sampled_from([None] + ["application/json"] * 6 + ["text/plain", "application/x-ndjson",
                                              "multipart/form-data; boundary=x", "application/json; charset=latin-1"]))
    if content_type:
        headers["Content-Type"] = content_type
    if data.draw(RARELY):
        headers["Host"] = data.draw(st.sampled_from(["evil.example", "127.0.0.1:1", "", "[::1]", "localhost.evil"]))
    if data.draw(RARELY):
        headers["X-CSRF-Token"] = data.draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
    fitting = [strategy for key, strategy in FOR_ROUTE.items() if path.endswith(key)]
    body = data.draw(st.one_of(bodies, *fitting, *fitting, *fitting))
    response = client.request(method, path, content=body.encode() if isinstance(body, str) else body,
                              headers=headers)
    assert response.status_code < 500, (method, path, response.text[:300])
    if response.status_code >= 400 and method != "HEAD":
        one_line_refusal(response)
