"""The annotation app's HTTP side: FastAPI routes over `annotate.service`, plus the two static pages.

Authentication: `Authorization: Bearer TOKEN` (scripts, the load test), or a session cookie from
POST /api/login (the pages). The cookie is HttpOnly and SameSite=Strict and carries the user id, the user's
session version and an expiry, signed with the server secret (annotate.sessions), which is never in the
database: reading the database is not enough to mint a session. Logout, a new password, a new token and
disabling the user bump the session version, so every earlier cookie gets 401; a disabled user gets 401 on
every route, by cookie or token. Requests that change something with cookie credentials must also send
X-CSRF-Token (an HMAC of the cookie, given by POST /api/login and GET /api/me to same-origin scripts only).
Admin routes answer 401 without credentials and 403 to annotators.

Before any route runs, `alignkit.serving.limit_requests` refuses bodies over the cap (413, by
Content-Length before reading), JSON nested too deep (400) and a Host that is not trusted (400). The items
import may take a larger body, but only from a request whose credentials name an admin. Every refusal is
a 4xx with {"detail": one line}. Every response carries a Content-Security-Policy that allows no inline
script, and the pages put model text into the DOM with textContent only. Each user has a token bucket
(default 20 requests/s, bursts of 40; rate 0 turns it off); beyond it, 429 with Retry-After. Logins and
password changes are limited per client address (bursts of 10, then one every 2 s).
"""

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

from alignkit.annotate import accounts, service
from alignkit.annotate.agreement import agreement_report
from alignkit.annotate.db import (
    MAX_ID,
    Item,
    Project,
    User,
    open_database,
    text_problem,
)
from alignkit.annotate.imports import check_import_row
from alignkit.annotate.sessions import Signer, server_secret
from alignkit.errors import AlignkitError
from alignkit.ratelimit import TokenBucket
from alignkit.serving import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    default_trusted_hosts,
    limit_requests,
    parse_json,
)

STATIC = Path(__file__).parent / "static"
COOKIE = "alignkit_session"
MAX_IMPORT_BYTES = 16 << 20  # a web import of up to ~10k pairs; bigger files go through `annotate import`
IMPORT_PATH = re.compile(r"/api/admin/projects/[^/]+/items")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
REFUSED_BY_CLASS = {accounts.NotFound: 404, accounts.Refused: 403, accounts.Conflict: 409, accounts.Invalid: 422}


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def refusal(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"detail": one_line(message)}, status, headers=SECURITY_HEADERS)


def authenticate(session, signer: Signer, authorization: str, cookie: str | None) -> tuple[User | None, bool]:
    """(user, by_cookie): the enabled user named by a Bearer token, else by a signed cookie whose session
    version is still the user's; (None, False) when neither holds."""
    if authorization.lower().startswith("bearer "):
        return accounts.user_by_token(session, authorization[7:].strip()), False
    read = signer.read(cookie) if cookie else None
    if read is None:
        return None, False
    user = session.get(User, read[0])
    if user is None or user.disabled or user.session_version != read[1]:
        return None, False
    return user, True


def create_app(db_url: str, rate: float = 20.0, burst: int = 40, max_body_bytes: int = MAX_BODY_BYTES,
               max_import_bytes: int = MAX_IMPORT_BYTES, trusted_hosts: list[str] | None = None,
               secret: bytes | None = None):
    """The app as an ASGI callable. `trusted_hosts` defaults to the loopback names (["*"] trusts any Host);
    `secret` to `sessions.server_secret(db_url)`; `rate` 0 turns the per-user limit off."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request

    _, Session = open_database(db_url)
    signer = Signer(secret or server_secret(db_url))
    app = FastAPI(title="alignkit annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_refusal(_request, error):
        response = refusal(error.status_code, error.detail)
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return refusal(422, "body: not valid JSON")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return refusal(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(AlignkitError)
    async def refuse(_request, error):
        status = next((code for cls, code in REFUSED_BY_CLASS.items() if isinstance(error, cls)), 400)
        return refusal(status, str(error))

    add_routes(app, Session, signer, TokenBucket(rate, burst) if rate > 0 else None)

    hosts = list(trusted_hosts) if trusted_hosts is not None else default_trusted_hosts("127.0.0.1")
    general = limit_requests(app, refusal, max_body_bytes, MAX_JSON_DEPTH, hosts)
    imports = limit_requests(app, refusal, max(max_import_bytes, max_body_bytes), MAX_JSON_DEPTH, hosts)

    def is_admin(request) -> bool:
        with Session() as session:
            user, _ = authenticate(session, signer, request.headers.get("authorization", ""),
                                   request.cookies.get(COOKIE))
            return user is not None and user.role == "admin"

    async def annotate_app(scope, receive, send):
        # the larger import cap is only for admins: anyone else's body is cut at the general cap unread
        if scope["type"] == "http" and IMPORT_PATH.fullmatch(scope.get("path", "")) \
                and await run_in_threadpool(is_admin, Request(scope)):
            return await imports(scope, receive, send)
        return await general(scope, receive, send)

    annotate_app.state, annotate_app.routes, annotate_app.signer = app.state, app.routes, signer
    return annotate_app


def add_routes(app, Session, signer: Signer, limiter: TokenBucket | None) -> None:
    """The pages and the API: sign-in and the session (`auth_routes`), the annotator's queue
    (`annotator_routes`) and the admin's users, projects and exports (`admin_routes`)."""
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    kinds, deps = body_kinds(), dependencies(Session, signer, limiter)
    auth_routes(app, kinds, deps, signer)
    annotator_routes(app, kinds, deps)
    admin_routes(app, kinds, deps)
    app.state.admin_routes = [r.path for r in app.routes if getattr(r, "path", "").startswith("/api/admin/")]


def body_kinds():
    """The request bodies and path parameters, checked by pydantic (built here: FastAPI loads lazily)."""
    from fastapi import Path as PathParam
    from pydantic import AfterValidator, BaseModel, Field

    def storable(value: str) -> str:
        why = text_problem("text", value)
        if why:
            raise ValueError(why.removeprefix("text: "))
        return value

    Text = Annotated[str, AfterValidator(storable)]

    class Login(BaseModel):
        name: Text | None = Field(default=None, max_length=200)
        password: Text | None = Field(default=None, max_length=accounts.MAX_PASSWORD)
        token: Text | None = Field(default=None, max_length=accounts.MAX_TOKEN)

    class Answer(BaseModel):
        choice: str = Field(max_length=20)
        strength: int | None = Field(default=None, ge=1, le=3)
        reason: Text = Field(default="", max_length=service.MAX_REASON)
        time_spent_ms: int | None = Field(default=None, ge=0, le=service.MAX_TIME_SPENT_MS)

    class Undo(BaseModel):
        judgment_id: int = Field(ge=1, le=MAX_ID)

    class NewUser(BaseModel):
        name: Text = Field(min_length=1, max_length=200)
        role: str = Field(default="annotator", max_length=20)
        password: Text | None = Field(default=None, max_length=accounts.MAX_PASSWORD)

    class NewPassword(BaseModel):
        password: Text = Field(max_length=accounts.MAX_PASSWORD)

    class OwnPassword(BaseModel):
        old_password: Text = Field(max_length=accounts.MAX_PASSWORD)
        new_password: Text = Field(max_length=accounts.MAX_PASSWORD)

    class NewProject(BaseModel):
        name: Text = Field(min_length=1, max_length=200)
        guidelines: Text = Field(default="", max_length=100_000)
        annotators_per_item: int = Field(default=1, ge=1, le=service.MAX_ANNOTATORS_PER_ITEM)

    return SimpleNamespace(Name=Annotated[str, PathParam(max_length=200)],
                           Id=Annotated[int, PathParam(ge=1, le=MAX_ID)], Login=Login, Answer=Answer, Undo=Undo,
                           NewUser=NewUser, NewPassword=NewPassword, OwnPassword=OwnPassword, NewProject=NewProject)


def dependencies(Session, signer: Signer, limiter: TokenBucket | None):
    """The routes' dependencies: a database session, the signed-in user (401, CSRF, rate limit), an admin
    (403 otherwise), and the helpers the sign-in routes share."""
    from fastapi import Depends, HTTPException, Request, Response

    login_limiter = TokenBucket(rate=0.5, burst=10)  # per client address: password guessing gets slow

    def db():
        with Session() as session:
            yield session

    def slow_down(bucket: TokenBucket | None, key, what: str) -> None:
        wait = bucket.take(key) if bucket is not None else 0
        if wait:
            raise HTTPException(429, f"too many {what}; wait", headers={"Retry-After": f"{wait:.2f}"})

    def current_user(request: Request, session=Depends(db)) -> User:
        cookie = request.cookies.get(COOKIE)
        user, by_cookie = authenticate(session, signer, request.headers.get("authorization", ""), cookie)
        if user is None:
            raise HTTPException(401, "log in first (POST /api/login) or send Authorization: Bearer TOKEN")
        if by_cookie and request.method not in ("GET", "HEAD", "OPTIONS") \
                and not signer.csrf_matches(cookie, request.headers.get("x-csrf-token", "")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token")
        request.state.cookie = cookie if by_cookie else None
        slow_down(limiter, user.id, "requests")
        return user

    def admin(user: User = Depends(current_user)) -> User:
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user

    def slow_logins(request: Request, what: str) -> None:
        slow_down(login_limiter, request.client.host if request.client else "?", what)

    def start_session(response: Response, request: Request, user: User) -> dict:
        cookie = signer.cookie(user)
        response.set_cookie(COOKIE, cookie, max_age=signer.seconds, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return {"name": user.name, "role": user.role, "csrf": signer.csrf(cookie)}

    return SimpleNamespace(db=db, current_user=current_user, admin=admin, slow_logins=slow_logins,
                           start_session=start_session)


def auth_routes(app, kinds, deps, signer: Signer) -> None:
    """The two pages, sign-in and sign-out, who am I, and changing one's own password."""
    from fastapi import Depends, HTTPException, Request, Response
    from fastapi.responses import FileResponse

    @app.get("/", include_in_schema=False)
    def annotator_page():
        return FileResponse(STATIC / "annotate.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return FileResponse(STATIC / "admin.html")

    @app.post("/api/login")
    def login(body: kinds.Login, request: Request, response: Response, session=Depends(deps.db)):
        deps.slow_logins(request, "login attempts")
        user = None
        if body.token:
            user = accounts.user_by_token(session, body.token)
        elif body.name and body.password:
            user = accounts.user_by_password(session, body.name, body.password)
        if user is None:
            raise HTTPException(401, "wrong name, password or token")
        return deps.start_session(response, request, user)

    @app.post("/api/logout")
    def logout(response: Response, session=Depends(deps.db), user: User = Depends(deps.current_user)):
        accounts.log_out(session, user)  # ends this user's sessions in every browser
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @app.get("/api/me")
    def me(request: Request, user: User = Depends(deps.current_user)):
        cookie = request.state.cookie
        return {"name": user.name, "role": user.role, "csrf": signer.csrf(cookie) if cookie else None}

    @app.post("/api/me/password")
    def own_password(body: kinds.OwnPassword, request: Request, response: Response, session=Depends(deps.db),
                     user: User = Depends(deps.current_user)):
        deps.slow_logins(request, "password attempts")
        user = accounts.change_own_password(session, user, body.old_password, body.new_password)
        fresh = deps.start_session(response, request, user) if request.state.cookie else {}
        return {"ok": True, **fresh}


def annotator_routes(app, kinds, deps) -> None:
    """The projects, the next item of one's queue, answering it, and undoing an answer."""
    from fastapi import Body, Depends
    from sqlalchemy import select

    @app.get("/api/projects")
    def projects(session=Depends(deps.db), _user: User = Depends(deps.current_user)):
        return [{"name": p.name, "guidelines": p.guidelines}
                for p in session.scalars(select(Project).order_by(Project.id))]

    @app.get("/api/projects/{name}/next")
    def next_item(name: kinds.Name, session=Depends(deps.db), user: User = Depends(deps.current_user)):
        project = service.project_by_name(session, name)
        assignment = service.next_assignment(session, user, project)
        position = service.queue_position(session, user, project)
        if assignment is None:
            return {"finished": True, "guidelines": project.guidelines, "project": project.name, **position}
        item = session.get(Item, assignment.item_id)
        return {"finished": False, **service.shown_item(assignment, item, project, position)}

    @app.post("/api/assignments/{assignment_id}/judgment")
    def judge(assignment_id: kinds.Id, body: kinds.Answer, session=Depends(deps.db),
              user: User = Depends(deps.current_user)):
        judgment, created = service.submit_judgment(session, user, assignment_id, body.choice, body.strength,
                                                    body.reason, body.time_spent_ms)
        return {"judgment_id": judgment.id, "created": created}

    @app.post("/api/projects/{name}/undo")
    def undo(name: kinds.Name, body: Annotated[kinds.Undo, Body()], session=Depends(deps.db),
             user: User = Depends(deps.current_user)):
        project = service.project_by_name(session, name)
        assignment_id = service.undo_judgment(session, user, project, body.judgment_id)
        return {"judgment_id": body.judgment_id, "assignment_id": assignment_id}


def admin_routes(app, kinds, deps) -> None:
    """Users (add, passwords, tokens, disable), projects (add, import items), progress, agreement, export."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import PlainTextResponse
    from sqlalchemy import select

    admin = Depends(deps.admin)

    @app.get("/api/admin/users")
    def users(session=Depends(deps.db), _admin: User = admin):
        return [{"name": u.name, "role": u.role, "disabled": u.disabled}
                for u in session.scalars(select(User).order_by(User.id))]

    @app.post("/api/admin/users")
    def add_user(body: kinds.NewUser, session=Depends(deps.db), _admin: User = admin):
        user, token = accounts.create_user(session, body.name, body.role, body.password)
        return {"name": user.name, "role": user.role, "token": token}

    @app.post("/api/admin/users/{name}/password")
    def user_password(name: kinds.Name, body: kinds.NewPassword, session=Depends(deps.db), _admin: User = admin):
        accounts.set_password(session, name, body.password)
        return {"name": name, "sessions_ended": True}

    @app.post("/api/admin/users/{name}/rotate-token")
    def user_token(name: kinds.Name, session=Depends(deps.db), _admin: User = admin):
        return {"name": name, "token": accounts.rotate_token(session, name), "sessions_ended": True}

    @app.post("/api/admin/users/{name}/disable")
    def disable(name: kinds.Name, session=Depends(deps.db), me: User = admin):
        if name == me.name:  # an admin locking themself out by a slip; the CLI can still do it
            raise HTTPException(409, "you cannot disable yourself; another admin or `alignkit annotate "
                                     "disable-user` can")
        return {"name": name, "disabled": accounts.set_disabled(session, name, True).disabled}

    @app.post("/api/admin/users/{name}/enable")
    def enable(name: kinds.Name, session=Depends(deps.db), _admin: User = admin):
        return {"name": name, "disabled": accounts.set_disabled(session, name, False).disabled}

    @app.post("/api/admin/projects")
    def add_project(body: kinds.NewProject, session=Depends(deps.db), _admin: User = admin):
        project = service.create_project(session, body.name, body.guidelines, body.annotators_per_item)
        return {"name": project.name, "annotators_per_item": project.annotators_per_item}

    @app.post("/api/admin/projects/{name}/items")
    async def add_items(name: kinds.Name, request: Request, session=Depends(deps.db), _admin: User = admin):
        project = service.project_by_name(session, name)
        rows, problems = parse_rows(await request.body())
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise HTTPException(422, "; ".join(problems[:5]) + more)
        return {"items": service.import_items(session, project, rows)}

    @app.get("/api/admin/projects/{name}/progress")
    def project_progress(name: kinds.Name, session=Depends(deps.db), _admin: User = admin):
        return service.progress(session, service.project_by_name(session, name))

    @app.get("/api/admin/projects/{name}/agreement")
    def agreement(name: kinds.Name, session=Depends(deps.db), _admin: User = admin):
        return agreement_report(service.votes_by_item(session, service.project_by_name(session, name)))

    @app.get("/api/admin/projects/{name}/export")
    def export(name: kinds.Name, votes: str = "majority", ties: str = "drop", session=Depends(deps.db),
               _admin: User = admin):
        rows, _ = service.export_rows(session, service.project_by_name(session, name), votes, ties)
        return PlainTextResponse("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                 media_type="application/x-ndjson")


def parse_rows(raw: bytes) -> tuple[list[dict], list[str]]:
    """The JSONL rows of an import body, and one `line N: field: why` per bad line."""
    rows, problems = [], []
    for line, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = parse_json(text.encode(), MAX_JSON_DEPTH)
        except ValueError as error:
            problems.append(f"line {line}: row: {error}")
            continue
        why = check_import_row(row)
        if why:
            problems.append(f"line {line}: {why}")
        else:
            rows.append(row)
    return rows, problems


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8000, rate: float = 20.0, burst: int = 40,
          max_body_bytes: int = MAX_BODY_BYTES, max_import_bytes: int = MAX_IMPORT_BYTES,
          trusted_hosts: list[str] | None = None, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, secret: bytes | None = None) -> None:
    import uvicorn

    app = create_app(db_url, rate, burst, max_body_bytes, max_import_bytes,
                     trusted_hosts if trusted_hosts is not None else default_trusted_hosts(host), secret)
    uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                server_header=False)
