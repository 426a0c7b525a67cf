"""Users and their credentials: access tokens, passwords, roles, and the switches that end sessions.

- Tokens are 32 random bytes (urlsafe base64), stored as sha256: a random secret needs no salt or stretching.
- Passwords are stored as `scrypt$n=16384,r=8,p=1$SALT$HASH` (hex), so the cost can rise later without
  breaking the hashes already stored; rows from before the parameters were stored (`scrypt$SALT$HASH`)
  read as n=2^14, r=8, p=1.
- A login by name runs scrypt whether or not the name exists (against a fixed dummy hash), so its time
  does not tell an attacker which names exist.
- `session_version` is signed into every session cookie (annotate.sessions): logout, a new password, a new
  token and disabling the user bump it, which ends every cookie issued before. A disabled user can neither
  log in nor use their token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets

from sqlalchemy import select, update

from alignkit.annotate.db import ROLES, User, text_problem
from alignkit.errors import AlignkitError

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
SCRYPT_LIMITS = {"n": 2**20, "r": 32, "p": 16}  # a stored hash asking for more is refused, not computed
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_NAME, MAX_TOKEN = 200, 200
_PARAMS = re.compile(r"n=(\d{1,8}),r=(\d{1,3}),p=(\d{1,3})")


class NotFound(AlignkitError, LookupError):
    """No such user, project, assignment or judgment, or not the caller's (404)."""


class Refused(AlignkitError, PermissionError):
    """The caller may not do this (403)."""


class Conflict(AlignkitError):
    """The request contradicts what is stored (409)."""


class Invalid(AlignkitError, ValueError):
    """A value in the request is out of range or of the wrong kind (422)."""


# -- passwords and tokens ----------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT["n"], r: int = SCRYPT["r"],
                  p: int = SCRYPT["p"]) -> str:
    """scrypt, stored with its parameters as scrypt$n=N,r=R,p=P$salt$hash (hex)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32,
                            maxmem=129 * n * r * p + (1 << 20))
    return f"scrypt$n={n},r={r},p={p}${salt.hex()}${digest.hex()}"


def _parse_hash(stored: str) -> tuple[dict, bytes, bytes] | None:
    """(parameters, salt, digest) of a stored hash, old or new form; None when it is not one we wrote."""
    parts = stored.split("$")
    if len(parts) == 3 and parts[0] == "scrypt":  # before the parameters were stored
        parts = ["scrypt", "n={n},r={r},p={p}".format(**SCRYPT), parts[1], parts[2]]
    if len(parts) != 4 or parts[0] != "scrypt" or not (match := _PARAMS.fullmatch(parts[1])):
        return None
    params = dict(zip("nrp", map(int, match.groups())))
    if any(not 1 <= params[k] <= SCRYPT_LIMITS[k] for k in params) or params["n"] & (params["n"] - 1):
        return None
    try:
        return params, bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return None


def check_password(password: str, stored: str | None) -> bool:
    parsed = _parse_hash(stored) if stored else None
    if parsed is None:
        return False
    params, salt, digest = parsed
    computed = hash_password(password, salt, **params).rsplit("$", 1)[1]
    return hmac.compare_digest(computed, digest.hex())


@functools.cache
def _dummy_hash() -> str:
    """What an unknown name's password is checked against, so that it costs one scrypt like a known name."""
    return hash_password(secrets.token_hex(16))


def password_problem(password) -> str | None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    return text_problem("password", password)


def token_hash(token: str) -> str:
    """Tokens are random 32-byte secrets, so one sha256 suffices (no salt or stretching needed)."""
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


# -- users -------------------------------------------------------------------------------------------------


def create_user(session, name: str, role: str = "annotator", password: str | None = None) -> tuple[User, str]:
    """A new user and their access token (shown once; only its hash is stored)."""
    if role not in ROLES:
        raise AlignkitError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    why = text_problem("name", name, MAX_NAME) or ("name: empty" if not name.strip() else None)
    why = why or (password_problem(password) if password is not None else None)
    if why:
        raise AlignkitError(why)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise AlignkitError(f"name: a user called {name!r} exists already")
    token = secrets.token_urlsafe(32)
    user = User(name=name, role=role, token_hash=token_hash(token), session_version=0, disabled=False,
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.commit()
    return user, token


def user_by_name(session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name)) if len(name) <= MAX_NAME else None
    if user is None:
        raise NotFound(f"user: no user called {name!r}")
    return user


def user_by_token(session, token: str) -> User | None:
    """The enabled user holding `token`, else None."""
    if not token or len(token) > MAX_TOKEN:
        return None
    user = session.scalar(select(User).where(User.token_hash == token_hash(token)))
    return user if user is not None and not user.disabled else None


def user_by_password(session, name: str, password: str) -> User | None:
    """The enabled user `name` when `password` is theirs, else None; one scrypt either way."""
    user = session.scalar(select(User).where(User.name == name)) if 0 < len(name) <= MAX_NAME else None
    stored = user.password_hash if user is not None else None
    matches = check_password(password[:MAX_PASSWORD], stored if _parse_hash(stored or "") else _dummy_hash())
    if not matches or stored is None or user.disabled:
        return None
    return user


def end_sessions(session, user: User) -> None:
    """Bump the user's session version (in SQL, so two bumps at once both count); every cookie issued
    before stops working. The caller commits."""
    session.execute(update(User).where(User.id == user.id).values(session_version=User.session_version + 1))


def _commit(session, user: User) -> User:
    session.commit()
    session.refresh(user)  # the bumped session_version, for a cookie issued right after
    return user


def log_out(session, user: User) -> None:
    end_sessions(session, user)
    _commit(session, user)


def set_password(session, name: str, password: str) -> User:
    """A new password for `name`; their sessions end."""
    why = password_problem(password)
    if why:
        raise AlignkitError(why)
    user = user_by_name(session, name)
    user.password_hash = hash_password(password)
    end_sessions(session, user)
    return _commit(session, user)


def change_own_password(session, user: User, old: str, new: str) -> User:
    """The user's own password change: the old one must be right (a stolen session alone cannot set one)."""
    if not check_password(old[:MAX_PASSWORD], user.password_hash):
        raise Refused("old_password: wrong (a user without a password asks an admin to set one)")
    return set_password(session, user.name, new)


def rotate_token(session, name: str) -> str:
    """A new access token for `name` (the old one stops working, and so do their sessions)."""
    user = user_by_name(session, name)
    token = secrets.token_urlsafe(32)
    user.token_hash = token_hash(token)
    end_sessions(session, user)
    _commit(session, user)
    return token


def set_disabled(session, name: str, disabled: bool) -> User:
    """Disable (every session, token and login refused from now on) or enable `name` again."""
    user = user_by_name(session, name)
    user.disabled = disabled
    if disabled:
        end_sessions(session, user)
    return _commit(session, user)
