"""What the annotation app does, as plain functions on a SQLAlchemy session (the HTTP API and the CLI both
call these): users and credentials, projects, import, the annotator's queue, judgments and undo,
progress, export to preference data.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import secrets
from collections import Counter

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError

from alignkit.annotate.db import CHOICES, ROLES, Assignment, Item, Judgment, Project, User
from alignkit.errors import AlignkitError

SHOWN = {"left": 0, "right": 1}  # what the annotator clicks, before the side swap is undone


# -- credentials -------------------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt (n=2^14, r=8, p=1), stored as scrypt$salt$hash in hex."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, digest = stored.split("$")
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)


def token_hash(token: str) -> str:
    """Tokens are random 32-byte secrets, so one sha256 suffices (no salt or stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session, name: str, role: str = "annotator", password: str | None = None) -> tuple[User, str]:
    """A new user and their access token (shown once; only its hash is stored)."""
    if role not in ROLES:
        raise AlignkitError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    if not name.strip():
        raise AlignkitError("name: empty")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise AlignkitError(f"name: a user called {name!r} exists already")
    token = secrets.token_urlsafe(32)
    user = User(name=name, role=role, token_hash=token_hash(token),
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.commit()
    return user, token


def user_by_token(session, token: str) -> User | None:
    return session.scalar(select(User).where(User.token_hash == token_hash(token))) if token else None


def user_by_password(session, name: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.name == name))
    return user if user is not None and check_password(password, user.password_hash) else None


# -- projects and items ------------------------------------------------------------------------------------


def create_project(session, name: str, guidelines: str = "", annotators_per_item: int = 1) -> Project:
    if annotators_per_item < 1:
        raise AlignkitError(f"annotators_per_item: must be at least 1, got {annotators_per_item}")
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise AlignkitError(f"project: {name!r} exists already")
    project = Project(name=name, guidelines=guidelines, annotators_per_item=annotators_per_item)
    session.add(project)
    session.commit()
    return project


def project_by_name(session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise AlignkitError(f"project: no project called {name!r}")
    return project


def pair_items(row: dict) -> list[dict]:
    """The pairwise items of one imported row: {"prompt", "responses": [...], optional "models"} (what
    `alignkit generate-pairs` writes), or {"prompt", "chosen", "rejected"} (preference data to re-judge)."""
    if "responses" in row:
        responses = row["responses"]
        models = row.get("models") or [row.get("model")] * len(responses)
    else:
        responses, models = [row["chosen"], row["rejected"]], [None, None]
    texts = [r if isinstance(r, str) else r[-1]["content"] for r in responses]
    extra = {k: v for k, v in row.items() if k not in ("prompt", "responses", "models", "model", "chosen", "rejected",
                                                        "finish_reasons")}
    return [{"prompt": row["prompt"], "response_a": texts[i], "response_b": texts[j], "model_a": models[i],
             "model_b": models[j], "extra": extra}
            for i, j in itertools.combinations(range(len(texts)), 2) if texts[i] != texts[j]]


def check_import_row(row) -> str | None:
    """Why an imported row cannot become items (None when it can)."""
    if not isinstance(row, dict):
        return "row: must be a JSON object"
    if "prompt" not in row:
        return "prompt: missing"
    if "responses" in row:
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            return "responses: expected a list of at least 2 responses"
        if not all(isinstance(r, str) for r in responses):
            return "responses: expected strings"
        return None
    if not ("chosen" in row and "rejected" in row):
        return "responses: missing (or chosen and rejected)"
    return None


def import_items(session, project: Project, rows: list[dict]) -> int:
    """Add every pair of each row's responses as an item; returns how many items were added."""
    items = [Item(project_id=project.id, taken=0, **pair) for row in rows for pair in pair_items(row)]
    session.add_all(items)
    session.commit()
    return len(items)


# -- the annotator's queue ---------------------------------------------------------------------------------


def shown_item(assignment: Assignment, item: Item, project: Project, position: dict) -> dict:
    """What the annotator's page gets: no model names, the sides in this annotator's order."""
    left, right = (item.response_b, item.response_a) if assignment.swapped else (item.response_a, item.response_b)
    return {"assignment_id": assignment.id, "prompt": item.prompt, "left": left, "right": right,
            "guidelines": project.guidelines, "project": project.name, **position}


def next_assignment(session, user: User, project: Project, rng: random.Random | None = None):
    """The user's oldest unanswered assignment, else a new one on the item with the fewest annotators so
    far; None when the queue is done. Safe under concurrency: an item's `taken` only rises by a conditional
    UPDATE (taken < annotators_per_item), and (item, user) is unique."""
    open_one = session.scalar(
        select(Assignment).where(Assignment.user_id == user.id, Assignment.project_id == project.id,
                                 ~Assignment.id.in_(select(Judgment.assignment_id)))
        .order_by(Assignment.id).limit(1))
    if open_one is not None:
        return open_one
    rng = rng or random.SystemRandom()
    while True:  # each lost race means another annotator took an item, so this ends
        mine = select(Assignment.item_id).where(Assignment.user_id == user.id)
        candidates = list(session.scalars(
            select(Item.id).where(Item.project_id == project.id, Item.taken < project.annotators_per_item,
                                  ~Item.id.in_(mine)).order_by(Item.taken, Item.id).limit(64)))
        if not candidates:
            return None
        rng.shuffle(candidates)  # annotators arriving together try different items
        for item_id in candidates:
            won = session.execute(update(Item).where(Item.id == item_id,
                                                     Item.taken < project.annotators_per_item)
                                  .values(taken=Item.taken + 1)).rowcount
            if not won:
                session.rollback()
                continue
            assignment = Assignment(item_id=item_id, user_id=user.id, project_id=project.id,
                                    swapped=bool(rng.getrandbits(1)))
            session.add(assignment)
            try:
                session.commit()
                return assignment
            except IntegrityError:  # the same user asked twice at once: the other request has it
                session.rollback()
                return next_assignment(session, user, project, rng)


def queue_position(session, user: User, project: Project) -> dict:
    done = session.scalar(select(func.count(Judgment.id)).where(Judgment.user_id == user.id,
                                                               Judgment.project_id == project.id))
    open_items = session.scalar(select(func.count(Item.id)).where(
        Item.project_id == project.id, Item.taken < project.annotators_per_item,
        ~Item.id.in_(select(Assignment.item_id).where(Assignment.user_id == user.id))))
    pending = session.scalar(select(func.count(Assignment.id)).where(
        Assignment.user_id == user.id, Assignment.project_id == project.id,
        ~Assignment.id.in_(select(Judgment.assignment_id))))
    return {"judged": done, "remaining": open_items + pending}


def submit_judgment(session, user: User, assignment_id: int, choice: str, strength: int | None = None,
                    reason: str = "", time_spent_ms: int | None = None) -> tuple[Judgment, bool]:
    """Record the user's answer to their assignment; `choice` in screen terms (left, right, tie, both_bad,
    skip). Returns (judgment, created): a repeated submission returns the stored one, created False."""
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise LookupError(f"assignment {assignment_id}: not yours or does not exist")
    if choice in SHOWN:
        stored = "ab"[SHOWN[choice] ^ int(assignment.swapped)]
    elif choice in CHOICES and choice not in ("a", "b"):
        stored = choice
    else:
        raise ValueError(f"choice: must be one of left, right, tie, both_bad, skip; got {choice!r}")
    if strength is not None and strength not in (1, 2, 3):
        raise ValueError(f"strength: must be 1, 2 or 3; got {strength!r}")
    existing = session.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id))
    if existing is not None:
        return existing, False
    judgment = Judgment(assignment_id=assignment_id, item_id=assignment.item_id, user_id=user.id,
                        project_id=assignment.project_id, choice=stored, strength=strength, reason=reason or "",
                        time_spent_ms=time_spent_ms)
    session.add(judgment)
    if stored == "skip":  # give the slot back so another annotator can take the item
        session.execute(update(Item).where(Item.id == assignment.item_id).values(taken=Item.taken - 1))
    try:
        session.commit()
    except IntegrityError:  # the same submission raced itself
        session.rollback()
        return session.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id)), False
    return judgment, True


def undo_last(session, user: User, project: Project) -> int | None:
    """Delete the user's latest judgment in the project (its assignment comes back first in the queue);
    returns that assignment's id, or None when there is nothing to undo."""
    judgment = session.scalar(select(Judgment).where(Judgment.user_id == user.id, Judgment.project_id == project.id)
                              .order_by(Judgment.id.desc()).limit(1))
    if judgment is None:
        return None
    if judgment.choice == "skip":  # the skip gave the slot back; take it again
        session.execute(update(Item).where(Item.id == judgment.item_id).values(taken=Item.taken + 1))
    session.delete(judgment)
    session.commit()
    return judgment.assignment_id


# -- progress and export -----------------------------------------------------------------------------------


def progress(session, project: Project) -> dict:
    items = session.scalar(select(func.count(Item.id)).where(Item.project_id == project.id))
    rows = session.execute(
        select(User.name, func.count(Judgment.id), func.avg(Judgment.time_spent_ms),
               func.sum(case((Judgment.choice == "skip", 1), else_=0)))
        .join(Judgment, Judgment.user_id == User.id).where(Judgment.project_id == project.id)
        .group_by(User.name).order_by(User.name)).all()
    judged = sum(r[1] - (r[3] or 0) for r in rows)
    return {"project": project.name, "items": items, "annotators_per_item": project.annotators_per_item,
            "judgments_needed": items * project.annotators_per_item, "judgments": judged,
            "annotators": [{"name": name, "judgments": count - (skips or 0), "skips": skips or 0,
                            "mean_seconds": round((mean or 0) / 1000, 2)} for name, count, mean, skips in rows]}


def votes_by_item(session, project: Project) -> dict[int, list[tuple[str, str, int | None]]]:
    """item id -> [(annotator, choice, strength)] for every judgment that is not a skip."""
    out: dict[int, list] = {}
    for item_id, name, choice, strength in session.execute(
            select(Judgment.item_id, User.name, Judgment.choice, Judgment.strength)
            .join(User, User.id == Judgment.user_id)
            .where(Judgment.project_id == project.id, Judgment.choice != "skip").order_by(Judgment.id)):
        out.setdefault(item_id, []).append((name, choice, strength))
    return out


def majority(choices: list[str]) -> str | None:
    """The most common choice, or None when two choices tie for most."""
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def export_rows(session, project: Project, votes: str = "majority", ties: str = "drop") -> tuple[list[dict], dict]:
    """Preference rows ({"prompt", "chosen", "rejected", "margin"?, ...}) and counts.

    votes majority: one row per item with a majority (an even split is dropped); margin is the mean
    strength of the majority's votes when they gave one. votes all: one row per judgment. ties keep: tie
    verdicts become rows marked "tie": true (chosen = response a); drop: left out. "Both bad" is always
    left out: neither response is a good example of anything.
    """
    from alignkit.feedback.judges import preference_row

    if votes not in ("majority", "all") or ties not in ("drop", "keep"):
        raise AlignkitError(f"export: votes must be majority or all, ties drop or keep; got {votes!r}, {ties!r}")
    items = {i.id: i for i in session.scalars(select(Item).where(Item.project_id == project.id))}
    counts = Counter()
    rows = []
    for item_id, item_votes in votes_by_item(session, project).items():
        item = items[item_id]
        if votes == "majority":
            verdict = majority([c for _, c, _ in item_votes])
            if verdict is None:
                counts["no_majority"] += 1
                continue
            strengths = [s for _, c, s in item_votes if c == verdict and s is not None]
            groups = [(verdict, strengths, len(item_votes), sum(c == verdict for _, c, _ in item_votes))]
        else:
            groups = [(c, [s] if s is not None else [], 1, 1) for _, c, s in item_votes]
        for verdict, strengths, total, agreeing in groups:
            if verdict == "both_bad" or (verdict == "tie" and ties == "drop"):
                counts[verdict] += 1
                continue
            chosen, rejected = (item.response_b, item.response_a) if verdict == "b" else (item.response_a,
                                                                                       item.response_b)
            extra = {**item.extra, "votes": total, "agreeing": agreeing, "item_id": item.id}
            row = preference_row(item.prompt, chosen, rejected, None, "human", extra, tie=verdict == "tie")
            if strengths and verdict != "tie":
                row["margin"] = round(sum(strengths) / len(strengths), 4)
            rows.append(row)
            counts["rows"] += 1
    return rows, dict(counts)
