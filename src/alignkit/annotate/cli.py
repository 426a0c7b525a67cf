"""`alignkit annotate ...`: the app's server and its admin tasks from the shell (they work on the database
directly, so no server needs to be running)."""

from __future__ import annotations

import json
import sys

from alignkit.errors import DataError

DEFAULT_DB = "annotations.db"


def _session(args):
    from alignkit.annotate.db import open_database

    _, Session = open_database(args.db)
    return Session()


def cmd_serve(args) -> int:
    from alignkit.annotate.db import open_database
    from alignkit.annotate.server import serve

    open_database(args.db)  # migrate (and fail on a bad URL) before announcing anything
    print(f"alignkit annotate: serving {args.db} on http://{args.host}:{args.port}/ (admin: /admin); Ctrl-C stops",
          file=sys.stderr)
    serve(args.db, args.host, args.port, args.rate, args.burst)
    return 0


def cmd_add_user(args) -> int:
    from alignkit.annotate.service import create_user

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    with _session(args) as session:
        user, token = create_user(session, args.name, args.role, password)
    print(f"{user.role} {user.name}: token {token}  (shown once; log in with it or send Authorization: Bearer)")
    return 0


def cmd_create_project(args) -> int:
    from pathlib import Path

    from alignkit.annotate.service import create_project

    guidelines = Path(args.guidelines_file).read_text() if args.guidelines_file else args.guidelines
    with _session(args) as session:
        project = create_project(session, args.name, guidelines or "", args.annotators_per_item)
    print(f"project {project.name}: {project.annotators_per_item} annotator(s) per item")
    return 0


def cmd_import(args) -> int:
    from alignkit.annotate.service import check_import_row, import_items, project_by_name
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


def add_commands(commands, option, parser_class) -> None:
    annotate = commands.add_parser("annotate", help="the human-preference web app and its admin tasks",
                                   description="Collect 'which response is better?' judgments from people. "
                                   "See docs/annotate.md.")
    sub = annotate.add_subparsers(title="annotate commands", dest="annotate_command", metavar="COMMAND",
                                  parser_class=parser_class)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        option(p, "--db", default=DEFAULT_DB,
               help=f"SQLite file or database URL, e.g. postgresql://user@host/db (default: {DEFAULT_DB})")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run the web app (annotator page at /, admin dashboard at /admin)")
    option(p, "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    option(p, "--port", type=int, default=8000, help="port (default: 8000)")
    option(p, "--rate", type=float, default=20.0, help="requests per second per user (default: 20)")
    option(p, "--burst", type=int, default=40, help="requests a user may burst above the rate (default: 40)")

    p = command("add-user", cmd_add_user, "create a user and print their access token")
    option(p, "--name", required=True, help="user name (unique)")
    option(p, "--role", choices=("annotator", "admin"), default="annotator", help="default: annotator")
    option(p, "--password_stdin", action="store_true", help="also set a password, read from the first line of stdin")

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
    annotate.set_defaults(func=lambda args: annotate.print_help() or 2)
