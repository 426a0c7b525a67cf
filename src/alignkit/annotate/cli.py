"""`alignkit annotate ...`: the app's server and its admin tasks from the shell (they work on the database
directly, so no server needs to be running).

The database is `--db`, else the environment variable ALIGNKIT_DB_URL (which keeps a PostgreSQL password
out of `ps`), else annotations.db. A database URL is printed with its password masked. Passwords are read
from stdin, never from the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from alignkit.errors import AlignkitError, DataError
from alignkit.options import EXIT_BAD_INPUT, Parser, option

DEFAULT_DB = "annotations.db"
DB_ENV = "ALIGNKIT_DB_URL"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def database(args) -> str:
    """--db over ALIGNKIT_DB_URL over the default file."""
    return args.db or os.environ.get(DB_ENV) or DEFAULT_DB


def _session(args):
    from alignkit.annotate.db import open_database

    _, Session = open_database(database(args))
    return Session()


def _read_password() -> str:
    """The first line of stdin (a password on the command line would show in `ps` and shell history)."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise AlignkitError("password: give it on the first line of stdin, e.g. alignkit annotate set-password "
                            "--name NAME < file")
    return password


def _check_serve_options(args) -> None:
    if args.rate < 0 or args.burst < 1:
        raise AlignkitError(f"--rate must be 0 (no limit) or more and --burst at least 1; "
                            f"got {args.rate}, {args.burst}")
    if args.max_body_bytes < 1 or args.max_import_bytes < 1:
        raise AlignkitError("--max_body_bytes and --max_import_bytes: must be at least 1")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise AlignkitError("--ssl_certfile and --ssl_keyfile: give both (TLS) or neither")
    for path in filter(None, (args.ssl_certfile, args.ssl_keyfile)):
        if not os.path.isfile(path):
            raise AlignkitError(f"{path}: no such file")


def cmd_serve(args) -> int:
    from alignkit.annotate.db import open_database, shown_url
    from alignkit.annotate.server import serve
    from alignkit.annotate.sessions import server_secret

    _check_serve_options(args)
    db = database(args)
    secret = server_secret(db)
    open_database(db)  # migrate (and fail on a bad URL) before announcing anything
    hosts = [h.strip() for h in args.trusted_hosts.split(",") if h.strip()] if args.trusted_hosts else None
    tls = bool(args.ssl_certfile)
    if args.host not in LOOPBACK and not tls:
        print(f"alignkit annotate: warning: listening on {args.host} without TLS: passwords, tokens and cookies "
              "cross the network in clear; give --ssl_certfile/--ssl_keyfile or serve behind a TLS proxy",
              file=sys.stderr)
    scheme = "https" if tls else "http"
    print(f"alignkit annotate: serving {shown_url(db)} on {scheme}://{args.host}:{args.port}/ (admin: /admin); "
          "Ctrl-C stops", file=sys.stderr)
    serve(db, args.host, args.port, args.rate, args.burst, args.max_body_bytes, args.max_import_bytes, hosts,
          args.ssl_certfile, args.ssl_keyfile, secret)
    return 0


def cmd_add_user(args) -> int:
    from alignkit.annotate.accounts import create_user

    password = _read_password() if args.password_stdin else None
    with _session(args) as session:
        user, token = create_user(session, args.name, args.role, password)
    print(f"{user.role} {user.name}: token {token}  (shown once; log in with it or send Authorization: Bearer)")
    return 0


def cmd_set_password(args) -> int:
    from alignkit.annotate.accounts import set_password

    password = _read_password()
    with _session(args) as session:
        set_password(session, args.name, password)
    print(f"{args.name}: password set; their sessions have ended", file=sys.stderr)
    return 0


def cmd_rotate_token(args) -> int:
    from alignkit.annotate.accounts import rotate_token

    with _session(args) as session:
        token = rotate_token(session, args.name)
    print(f"{args.name}: new token {token}  (shown once; the old token and their sessions no longer work)")
    return 0


def switch_user(disabled: bool):
    """The disable-user / enable-user command: one function, the switch's direction fixed."""
    def run(args) -> int:
        from alignkit.annotate.accounts import set_disabled

        with _session(args) as session:
            set_disabled(session, args.name, disabled)
        print(f"{args.name}: " + ("disabled (every token, session and login refused)" if disabled else "enabled"),
              file=sys.stderr)
        return 0
    return run


def cmd_create_project(args) -> int:
    from alignkit.annotate.service import create_project

    guidelines = Path(args.guidelines_file).read_text() if args.guidelines_file else args.guidelines
    with _session(args) as session:
        project = create_project(session, args.name, guidelines or "", args.annotators_per_item)
    print(f"project {project.name}: {project.annotators_per_item} annotator(s) per item")
    return 0


def cmd_import(args) -> int:
    from alignkit.annotate.imports import check_import_row
    from alignkit.annotate.service import import_items, project_by_name
    from alignkit.data.formats import Problem
    from alignkit.data.io import scan

    rows, problems = [], []
    for line, row in scan(args.path):
        if isinstance(row, Problem):
            problems.append(row.format(str(args.path)))
            continue
        why = check_import_row(row)
        if why:
            problems.append(f"{args.path}:{line}: {why}")
        else:
            rows.append(row)
    if problems:
        raise DataError(problems)  # nothing is imported from a file with a bad row
    with _session(args) as session:
        added = import_items(session, project_by_name(session, args.project), rows)
    print(f"imported {added} pairwise items from {len(rows)} rows into {args.project}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from alignkit.annotate.service import export_rows, project_by_name
    from alignkit.data.io import write_jsonl

    with _session(args) as session:
        rows, counts = export_rows(session, project_by_name(session, args.project), args.votes, args.ties)
    write_jsonl(args.out, rows)
    left = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()) if k != "rows")
    print(f"wrote {len(rows)} preference rows to {args.out}" + (f" (left out: {left})" if left else ""),
          file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from alignkit.annotate.agreement import agreement_report
    from alignkit.annotate.service import progress, project_by_name, votes_by_item

    with _session(args) as session:
        project = project_by_name(session, args.project)
        report = {"progress": progress(session, project),
                  "agreement": agreement_report(votes_by_item(session, project))}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def add_commands(annotate) -> None:
    """Fill the `alignkit annotate` group."""
    annotate.description = "Collect 'which response is better?' judgments from people. See docs/annotate.md."
    sub = annotate.add_subparsers(title="annotate commands", dest="annotate_command", metavar="COMMAND",
                                  parser_class=Parser)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        option(p, "--db", default=None,
               help=f"SQLite file or database URL, e.g. postgresql://user@host/db (default: ${DB_ENV}, "
                    f"else {DEFAULT_DB})")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run the web app (annotator page at /, admin dashboard at /admin)")
    option(p, "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    option(p, "--port", type=int, default=8000, help="port (default: 8000)")
    option(p, "--rate", type=float, default=20.0, help="requests per second per user; 0: no limit (default: 20)")
    option(p, "--burst", type=int, default=40, help="requests a user may burst above the rate (default: 40)")
    option(p, "--max_body_bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)")
    option(p, "--max_import_bytes", type=int, default=16 << 20,
           help="largest items import, for admins only (default: 16 MiB; `annotate import` has no limit)")
    option(p, "--trusted_hosts", default=None,
           help="comma-separated Host names the server answers to (default: the loopback names when "
                "listening on loopback, else the listening address); * trusts any")
    option(p, "--ssl_certfile", default=None, help="TLS certificate (PEM), passed to uvicorn")
    option(p, "--ssl_keyfile", default=None, help="TLS private key (PEM), passed to uvicorn")

    p = command("add-user", cmd_add_user, "create a user and print their access token")
    option(p, "--name", required=True, help="user name (unique)")
    option(p, "--role", choices=("annotator", "admin"), default="annotator", help="default: annotator")
    option(p, "--password_stdin", action="store_true", help="also set a password, read from the first line of stdin")

    p = command("set-password", cmd_set_password,
                "set a user's password, read from the first line of stdin; ends their sessions")
    option(p, "--name", required=True, help="user name")
    p = command("rotate-token", cmd_rotate_token, "give a user a new access token (printed once); ends their sessions")
    option(p, "--name", required=True, help="user name")
    p = command("disable-user", switch_user(True), "refuse a user's token, sessions and logins from now on")
    option(p, "--name", required=True, help="user name")
    p = command("enable-user", switch_user(False), "let a disabled user in again")
    option(p, "--name", required=True, help="user name")

    p = command("create-project", cmd_create_project, "create a project")
    option(p, "--name", required=True, help="project name (unique)")
    option(p, "--guidelines", default="", help="guidelines text shown to annotators")
    option(p, "--guidelines_file", help="read the guidelines from this file instead")
    option(p, "--annotators_per_item", type=int, default=1, help="judgments wanted per item (default: 1)")

    p = command("import", cmd_import, "import items from JSONL (alignkit generate-pairs output, or preference rows)")
    p.add_argument("path", help="rows with prompt and responses (2 or more), or prompt, chosen and rejected")
    option(p, "--project", required=True, help="project to add the items to")

    p = command("export", cmd_export, "write the judgments as preference data (for alignkit rm / dpo)")
    option(p, "--project", required=True, help="project to export")
    option(p, "--out", "--output", required=True, help="JSONL file to write")
    option(p, "--votes", choices=("majority", "all"), default="majority",
           help="majority: one row per item with a majority; all: one row per judgment (default: majority)")
    option(p, "--ties", choices=("drop", "keep"), default="drop",
           help="keep tie verdicts as rows marked tie: true (default: drop)")

    p = command("report", cmd_report, "progress per annotator and agreement statistics, as JSON")
    option(p, "--project", required=True, help="project to report on")
    annotate.set_defaults(func=lambda args: annotate.print_help() or EXIT_BAD_INPUT)
