"""What the annotation app does, as plain functions on a SQLAlchemy session (the HTTP API and the CLI both
call these): projects, import, the annotator's queue, judgments and undo, progress, export to preference
data. Users and credentials are in accounts.py (re-exported here), the import format in imports.py.

The one count that must never be wrong is an item's `taken`: the assignments handed out on it, less the
skipped ones. It only rises by a conditional UPDATE (taken < annotators_per_item), which is what keeps
`taken <= annotators_per_item` true however many annotators ask, skip and undo at once.
"""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from alignkit.annotate.accounts import (  # noqa: F401
    Conflict,
    Invalid,
    NotFound,
    Refused,
    create_user,
    user_by_name,
    user_by_password,
    user_by_token,
)
from alignkit.annotate.db import CHOICES, Assignment, Item, Judgment, Project, User, text_problem
from alignkit.annotate.imports import pair_items
from alignkit.data.formats import preference_row
from alignkit.errors import AlignkitError

SHOWN = {"left": 0, "right": 1}  # what the annotator clicks, before the side swap is undone
MAX_TIME_SPENT_MS = 24 * 3600 * 1000  # a day; more is a broken clock, not a judgment
MAX_ANNOTATORS_PER_ITEM = 1000
MAX_REASON = 5000


# -- projects and items ------------------------------------------------------------------------------------


def create_project(session, name: str, guidelines: str = "", annotators_per_item: int = 1) -> Project:
    if not 1 <= annotators_per_item <= MAX_ANNOTATORS_PER_ITEM:
        raise AlignkitError(f"annotators_per_item: must be 1 to {MAX_ANNOTATORS_PER_ITEM}, got {annotators_per_item}")
    why = (text_problem("name", name, 200) or ("name: empty" if not name.strip() else None)
           or text_problem("guidelines", guidelines))
    if why:
        raise AlignkitError(why)
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise AlignkitError(f"project: {name!r} exists already")
    project = Project(name=name, guidelines=guidelines, annotators_per_item=annotators_per_item)
    session.add(project)
    session.commit()
    return project


def project_by_name(session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name)) if len(name) <= 200 else None
    if project is None:
        raise NotFound(f"project: no project called {name!r}")
    return project


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
    """How far the user is, and the id of their latest judgment here (what the page's undo names)."""
    done = session.scalar(select(func.count(Judgment.id)).where(Judgment.user_id == user.id,
                                                               Judgment.project_id == project.id))
    open_items = session.scalar(select(func.count(Item.id)).where(
        Item.project_id == project.id, Item.taken < project.annotators_per_item,
        ~Item.id.in_(select(Assignment.item_id).where(Assignment.user_id == user.id))))
    pending = session.scalar(select(func.count(Assignment.id)).where(
        Assignment.user_id == user.id, Assignment.project_id == project.id,
        ~Assignment.id.in_(select(Judgment.assignment_id))))
    last = session.scalar(select(func.max(Judgment.id)).where(Judgment.user_id == user.id,
                                                             Judgment.project_id == project.id))
    return {"judged": done, "remaining": open_items + pending, "last_judgment_id": last}


def stored_choice(choice: str, swapped: bool) -> str:
    """A choice in screen terms (left, right, tie, both_bad, skip) in the item's terms (a, b, ...)."""
    if choice in SHOWN:
        return "ab"[SHOWN[choice] ^ int(swapped)]
    if choice in CHOICES and choice not in ("a", "b"):
        return choice
    raise Invalid(f"choice: must be one of left, right, tie, both_bad, skip; got {choice!r}")


def screen_choice(stored: str, swapped: bool) -> str:
    return next((shown for shown in SHOWN if stored_choice(shown, swapped) == stored), stored)


def _check_answer(strength, reason, time_spent_ms) -> None:
    if strength is not None and strength not in (1, 2, 3):
        raise Invalid(f"strength: must be 1, 2 or 3; got {strength!r}")
    if time_spent_ms is not None and not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise Invalid(f"time_spent_ms: must be 0 to {MAX_TIME_SPENT_MS} (a day)")
    why = text_problem("reason", reason or "", MAX_REASON)
    if why:
        raise Invalid(why)


def _repeat(existing: Judgment, assignment: Assignment, stored: str, strength: int | None) -> Judgment:
    """A second submission for an answered assignment: the same verdict is a harmless retry; another one
    is refused, so the page never says "Saved" while the first answer stays."""
    if (existing.choice, existing.strength) != (stored, strength):
        raise Conflict(f"assignment {assignment.id}: already answered "
                       f"{screen_choice(existing.choice, assignment.swapped)} (judgment {existing.id}); "
                       "undo it first to answer differently")
    return existing


def submit_judgment(session, user: User, assignment_id: int, choice: str, strength: int | None = None,
                    reason: str = "", time_spent_ms: int | None = None) -> tuple[Judgment, bool]:
    """Record the user's answer to their assignment; `choice` in screen terms (left, right, tie, both_bad,
    skip). Returns (judgment, created): repeating the same verdict returns the stored one, created False;
    another verdict raises Conflict. The reason and time of a repeat are not compared (a retry re-measures
    the time)."""
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise NotFound(f"assignment {assignment_id}: not yours or does not exist")
    stored = stored_choice(choice, assignment.swapped)
    _check_answer(strength, reason, time_spent_ms)
    existing = session.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id))
    if existing is not None:
        return _repeat(existing, assignment, stored, strength), False
    judgment = Judgment(assignment_id=assignment_id, item_id=assignment.item_id, user_id=user.id,
                        project_id=assignment.project_id, choice=stored, strength=strength, reason=reason or "",
                        time_spent_ms=time_spent_ms)
    session.add(judgment)
    if stored == "skip":  # give the slot back so another annotator can take the item
        session.execute(update(Item).where(Item.id == assignment.item_id).values(taken=Item.taken - 1))
    try:
        session.commit()
    except IntegrityError:  # the same submission raced itself; the rollback also undid the slot given back
        session.rollback()
        existing = session.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id))
        return _repeat(existing, assignment, stored, strength), False
    return judgment, True


def undo_judgment(session, user: User, project: Project, judgment_id: int) -> int:
    """Delete the user's judgment `judgment_id` in `project`; returns its assignment id (that comparison
    comes back first in their queue).

    Naming the judgment makes undo idempotent: a retried undo finds it gone (NotFound) and deletes nothing
    else. Undoing a skip re-takes the slot the skip gave back, by the same conditional UPDATE that hands
    out items; when another annotator has taken that slot meanwhile, nothing changes (Conflict) and the
    skip stays, so an item never has more annotators than it asks for.
    """
    gone = NotFound(f"judgment {judgment_id}: not yours in project {project.name!r}, or already undone")
    judgment = session.get(Judgment, judgment_id)
    if judgment is None or judgment.user_id != user.id or judgment.project_id != project.id:
        raise gone
    assignment_id, item_id, was_skip = judgment.assignment_id, judgment.item_id, judgment.choice == "skip"
    # deleting first means of two undos at once only one goes on (the other's DELETE finds no row)
    if not session.execute(delete(Judgment).where(Judgment.id == judgment_id)).rowcount:
        session.rollback()
        raise gone
    if was_skip and not session.execute(update(Item).where(Item.id == item_id,
                                                           Item.taken < project.annotators_per_item)
                                        .values(taken=Item.taken + 1)).rowcount:
        session.rollback()
        raise Conflict(f"judgment {judgment_id}: the item you skipped has been given to another annotator "
                       "since; the skip stays")
    session.commit()
    return assignment_id


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
