"""The annotation app's HTTP side: FastAPI routes over `annotate.service`, plus the two static pages.

Authentication: `Authorization: Bearer TOKEN` (scripts, the load test), or a session cookie from
POST /api/login (the pages). The cookie is HttpOnly and SameSite=Strict and carries the user id, an
expiry and an HMAC keyed by the user's token hash, so it survives server restarts and dies when the token
is rotated. Requests that change something with cookie credentials must also send X-CSRF-Token (given by
GET /api/me to same-origin scripts only). Admin routes answer 401 without credentials and 403 to
annotators. Every response carries a Content-Security-Policy that allows no inline script, and the pages
put model text into the DOM with textContent only: a response containing markup is shown, never run.
Each user has a token bucket (default 20 requests/s, bursts of 40); beyond it, 429 with Retry-After.
Logins are limited per client address (bursts of 10, then one every 2 s).
"""


import hashlib
import hmac
import json
import time
from pathlib import Path

from alignkit.annotate import service
from alignkit.annotate.db import User, open_database
from alignkit.errors import AlignkitError
from alignkit.ratelimit import TokenBucket

STATIC = Path(__file__).parent / "static"
COOKIE = "alignkit_session"
SESSION_SECONDS = 7 * 24 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _sign(user: User, payload: str) -> str:
    return hmac.new(user.token_hash.encode(), payload.encode(), hashlib.sha256).hexdigest()


def session_cookie(user: User) -> str:
    payload = f"{user.id}.{int(time.time()) + SESSION_SECONDS}"
    return f"{payload}.{_sign(user, payload)}"


def csrf_token(user: User, cookie: str) -> str:
    return _sign(user, "csrf:" + cookie)


def create_app(db_url: str, rate: float = 20.0, burst: int = 40):
    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    _, Session = open_database(db_url)
    limiter = TokenBucket(rate, burst)
    login_limiter = TokenBucket(rate=0.5, burst=10)  # per client address
    app = FastAPI(title="alignkit annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(AlignkitError)
    async def refuse(_request, error: AlignkitError):
        return JSONResponse({"detail": str(error)}, status_code=400)

    def db():
        with Session() as session:
            yield session

    def current_user(request: Request, session=Depends(db)) -> User:
        user, by_cookie = None, False
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            user = service.user_by_token(session, header[7:].strip())
        elif COOKIE in request.cookies:
            user, by_cookie = user_from_cookie(session, request.cookies[COOKIE]), True
        if user is None:
            raise HTTPException(401, "log in first (POST /api/login) or send Authorization: Bearer TOKEN")
        if by_cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent, csrf_token(user, request.cookies[COOKIE])):
                raise HTTPException(403, "missing or wrong X-CSRF-Token")
        wait = limiter.take(user.id)
        if wait:
            raise HTTPException(429, "too many requests; slow down", headers={"Retry-After": f"{wait:.2f}"})
        return user

    def admin(user: User = Depends(current_user)) -> User:
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user

    def user_from_cookie(session, cookie: str) -> User | None:
        try:
            user_id, expires, signature = cookie.split(".")
            user = session.get(User, int(user_id))
        except (ValueError, TypeError):
            return None
        if user is None or int(expires) < time.time():
            return None
        return user if hmac.compare_digest(signature, _sign(user, f"{user_id}.{expires}")) else None

    def project_or_404(session, name: str):
        try:
            return service.project_by_name(session, name)
        except AlignkitError as error:
            raise HTTPException(404, str(error)) from None

    class Login(BaseModel):
        name: str | None = None
        password: str | None = None
        token: str | None = None

    class Answer(BaseModel):
        choice: str
        strength: int | None = None
        reason: str = Field(default="", max_length=5000)
        time_spent_ms: int | None = Field(default=None, ge=0)

    class NewUser(BaseModel):
        name: str = Field(min_length=1, max_length=200)
        role: str = "annotator"
        password: str | None = None

    class NewProject(BaseModel):
        name: str = Field(min_length=1, max_length=200)
        guidelines: str = ""
        annotators_per_item: int = Field(default=1, ge=1)

    @app.get("/", include_in_schema=False)
    def annotator_page():
        return FileResponse(STATIC / "annotate.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return FileResponse(STATIC / "admin.html")

    @app.post("/api/login")
    def login(body: Login, request: Request, response: Response, session=Depends(db)):
        wait = login_limiter.take(request.client.host if request.client else "?")
        if wait:  # password guessing gets slow
            raise HTTPException(429, "too many login attempts; wait", headers={"Retry-After": f"{wait:.2f}"})
        user = None
        if body.token:
            user = service.user_by_token(session, body.token)
        elif body.name and body.password:
            user = service.user_by_password(session, body.name, body.password)
        if user is None:
            raise HTTPException(401, "wrong name, password or token")
        cookie = session_cookie(user)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return {"name": user.name, "role": user.role, "csrf": csrf_token(user, cookie)}

    @app.post("/api/logout")
    def logout(response: Response, _user: User = Depends(current_user)):
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @app.get("/api/me")
    def me(request: Request, user: User = Depends(current_user)):
        cookie = request.cookies.get(COOKIE)
        return {"name": user.name, "role": user.role, "csrf": csrf_token(user, cookie) if cookie else None}

    @app.get("/api/projects")
    def projects(session=Depends(db), _user: User = Depends(current_user)):
        from sqlalchemy import select

        from alignkit.annotate.db import Project

        return [{"name": p.name, "guidelines": p.guidelines}
                for p in session.scalars(select(Project).order_by(Project.id))]

    @app.get("/api/projects/{name}/next")
    def next_item(name: str, session=Depends(db), user: User = Depends(current_user)):
        project = project_or_404(session, name)
        assignment = service.next_assignment(session, user, project)
        position = service.queue_position(session, user, project)
        if assignment is None:
            return {"finished": True, "guidelines": project.guidelines, "project": project.name, **position}
        from alignkit.annotate.db import Item

        item = session.get(Item, assignment.item_id)
        return {"finished": False, **service.shown_item(assignment, item, project, position)}

    @app.post("/api/assignments/{assignment_id}/judgment")
    def judge(assignment_id: int, body: Answer, session=Depends(db), user: User = Depends(current_user)):
        try:
            judgment, created = service.submit_judgment(session, user, assignment_id, body.choice, body.strength,
                                                        body.reason, body.time_spent_ms)
        except LookupError as error:
            raise HTTPException(404, str(error)) from None
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        return {"judgment_id": judgment.id, "created": created}

    @app.post("/api/projects/{name}/undo")
    def undo(name: str, session=Depends(db), user: User = Depends(current_user)):
        return {"assignment_id": service.undo_last(session, user, project_or_404(session, name))}

    @app.get("/api/admin/users")
    def users(session=Depends(db), _admin: User = Depends(admin)):
        from sqlalchemy import select

        return [{"name": u.name, "role": u.role} for u in session.scalars(select(User).order_by(User.id))]

    @app.post("/api/admin/users")
    def add_user(body: NewUser, session=Depends(db), _admin: User = Depends(admin)):
        user, token = service.create_user(session, body.name, body.role, body.password)
        return {"name": user.name, "role": user.role, "token": token}

    @app.post("/api/admin/projects")
    def add_project(body: NewProject, session=Depends(db), _admin: User = Depends(admin)):
        project = service.create_project(session, body.name, body.guidelines, body.annotators_per_item)
        return {"name": project.name, "annotators_per_item": project.annotators_per_item}

    @app.post("/api/admin/projects/{name}/items")
    async def add_items(name: str, request: Request, session=Depends(db), _admin: User = Depends(admin)):
        project = project_or_404(session, name)
        text = (await request.body()).decode("utf-8", errors="replace")
        rows, problems = [], []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                problems.append(f"line {line}: row: not JSON ({error.msg})")
                continue
            why = service.check_import_row(row)
            if why:
                problems.append(f"line {line}: {why}")
            else:
                rows.append(row)
        if problems:
            raise HTTPException(422, problems)
        return {"items": service.import_items(session, project, rows)}

    @app.get("/api/admin/projects/{name}/progress")
    def project_progress(name: str, session=Depends(db), _admin: User = Depends(admin)):
        return service.progress(session, project_or_404(session, name))

    @app.get("/api/admin/projects/{name}/agreement")
    def agreement(name: str, session=Depends(db), _admin: User = Depends(admin)):
        from alignkit.annotate.agreement import agreement_report

        return agreement_report(service.votes_by_item(session, project_or_404(session, name)))

    @app.get("/api/admin/projects/{name}/export")
    def export(name: str, votes: str = "majority", ties: str = "drop", session=Depends(db),
               _admin: User = Depends(admin)):
        rows, _ = service.export_rows(session, project_or_404(session, name), votes, ties)
        return PlainTextResponse("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                 media_type="application/x-ndjson")

    app.state.admin_routes = [r.path for r in app.routes if getattr(r, "path", "").startswith("/api/admin/")]
    return app


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8000, rate: float = 20.0, burst: int = 40) -> None:
    import uvicorn

    uvicorn.run(create_app(db_url, rate, burst), host=host, port=port, log_level="warning")
