"""The annotation database: SQLAlchemy 2 tables, opened by URL, migrated by alembic.

SQLite (a file, the default) runs in WAL mode with a busy timeout, so readers never block the one writer
and concurrent writers wait instead of failing; PostgreSQL is used by URL (postgresql+psycopg://...).
`open_database` brings the schema to the newest migration before anything else touches it, so a
project's database survives upgrades of alignkit. A SQLite file holds password hashes and everyone's
judgments, so it is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the main
file's mode), and an older, looser file and its -wal/-shm are tightened to 0600 when opened.

Items are pairwise: a prompt and two responses (an imported row with k responses becomes its k(k-1)/2
pairs). An assignment gives one item to one annotator, with the sides randomised for that annotator; a
judgment answers one assignment (unique), which is what makes a retried submission harmless.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, make_url)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ROLES = ("admin", "annotator")
CHOICES = ("a", "b", "tie", "both_bad", "skip")  # a / b: the item's response_a / response_b won
MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL: a larger one in a request is refused, not looked up
PRIVATE = 0o600


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    session_version: Mapped[int] = mapped_column(Integer, default=0)  # signed into cookies; bumped to end them
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    annotators_per_item: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt: Mapped[object] = mapped_column(JSON)  # a string or a conversation (list of turns)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str | None] = mapped_column(String(300), nullable=True)  # never shown to annotators
    model_b: Mapped[str | None] = mapped_column(String(300), nullable=True)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)  # the imported row's other columns
    taken: Mapped[int] = mapped_column(Integer, default=0)  # assignments handed out (skips give theirs back)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    swapped: Mapped[bool] = mapped_column(Boolean)  # True: response_b is shown on the left
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Judgment(Base):
    __tablename__ = "judgments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    choice: Mapped[str] = mapped_column(String(20))  # one of CHOICES, in the item's terms (not the screen's)
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-3
    reason: Mapped[str] = mapped_column(Text, default="")
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def normalise_url(url: str) -> str:
    """A plain file path means a SQLite file; postgresql:// means psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def text_problem(field: str, value, max_chars: int | None = None) -> str | None:
    """Why `value` cannot be stored as text (None when it can): PostgreSQL refuses NUL characters and every
    database refuses lone surrogates (which JSON's \\udXXX escapes can produce)."""
    if not isinstance(value, str):
        return f"{field}: expected a string, got {type(value).__name__}"
    if max_chars is not None and len(value) > max_chars:
        return f"{field}: longer than {max_chars} characters"
    if "\x00" in value:
        return f"{field}: contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{field}: not valid Unicode (a lone surrogate)"
    return None


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    url = make_url(normalise_url(url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def shown_url(url: str) -> str:
    """`url` fit to print: a password in it is masked."""
    if "://" not in url:
        return url
    return make_url(url).render_as_string(hide_password=True)


def make_private(path: Path) -> None:
    """Create `path` mode 0600 if it is missing, and tighten it to 0600 if it is looser."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(PRIVATE)


def _private_sqlite_files(database: Path, create: bool) -> None:
    if create:
        make_private(database)
    for companion in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if companion.exists():
            make_private(companion)


def open_database(url: str, migrate: bool = True):
    """(engine, sessionmaker) for `url`, the schema upgraded to the newest migration first."""
    url = normalise_url(url)
    sqlite = url.startswith("sqlite")
    database = sqlite_file(url)
    if database is not None:
        _private_sqlite_files(database, create=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {},
                           pool_pre_ping=not sqlite)
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed write survives a killed process
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    if migrate:
        upgrade(engine)
    if database is not None:  # the -wal and -shm exist now: check that they came out private too
        _private_sqlite_files(database, create=False)
    return engine, sessionmaker(engine, expire_on_commit=False)


def upgrade(engine) -> None:
    """alembic upgrade head, on this engine's connection (no alembic.ini needed)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
