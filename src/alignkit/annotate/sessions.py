"""Session cookies and CSRF tokens that cannot be forged from the database and can be revoked.

A cookie is `USER_ID.SESSION_VERSION.EXPIRES.SIGNATURE`, the signature an HMAC-SHA256 of the rest under the
server secret. The secret is never in the database, so reading the database file (or a backup of it) is not
enough to mint a session; the user's `session_version` inside the signed text lets logout, a new password, a
new token or disabling the user end every cookie issued before. The CSRF token is an HMAC of the cookie
under the same secret, so it dies with the cookie.

The server secret (32 random bytes, hex) comes from ALIGNKIT_SESSION_SECRET when that is set; otherwise,
for a SQLite file, from `<database>.secret` next to it, created mode 0600 on first start. For PostgreSQL
the variable is required: the servers sharing one database must share one secret, and there is no file
of the database's to keep it beside. In-memory SQLite gets a fresh secret per process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from sqlalchemy import make_url

from alignkit.annotate.db import MAX_ID, User, make_private, normalise_url, sqlite_file
from alignkit.errors import AlignkitError

SECRET_ENV = "ALIGNKIT_SESSION_SECRET"
MIN_SECRET_CHARS = 32
SESSION_SECONDS = 7 * 24 * 3600
_COOKIE = re.compile(r"(\d{1,10})\.(\d{1,10})\.(\d{1,12})\.([0-9a-f]{64})")


def server_secret(db_url: str) -> bytes:
    """The secret that signs sessions for the database at `db_url` (see the module docstring)."""
    given = os.environ.get(SECRET_ENV, "")
    if given:
        if len(given) < MIN_SECRET_CHARS:
            raise AlignkitError(f"{SECRET_ENV}: must be at least {MIN_SECRET_CHARS} characters "
                                "(python -c 'import secrets; print(secrets.token_hex(32))' makes one)")
        return given.encode()
    database = sqlite_file(db_url)
    if database is not None:
        return _secret_file(Path(f"{database}.secret"))
    if make_url(normalise_url(db_url)).get_backend_name() == "sqlite":  # in memory: dies with the process
        return secrets.token_bytes(32)
    raise AlignkitError(f"set {SECRET_ENV} to a random string of at least {MIN_SECRET_CHARS} characters, the same "
                        "for every server on this database (python -c 'import secrets; print(secrets.token_hex(32))')")


def _secret_file(path: Path) -> bytes:
    """The secret kept in `path`, written there first when it is missing. The new file is written under a
    temporary name and linked into place, so two servers starting at once agree on one secret."""
    if not path.exists():
        scratch = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        make_private(scratch)
        scratch.write_text(secrets.token_hex(32) + "\n")
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    make_private(path)
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise AlignkitError(f"{path}: not a session secret (64 hex characters); delete it to make a new one, "
                            "which logs everyone out")
    return bytes.fromhex(text)


class Signer:
    """Mints and checks session cookies and CSRF tokens with the server secret."""

    def __init__(self, secret: bytes, seconds: int = SESSION_SECONDS):
        self.secret, self.seconds = secret, seconds

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()

    def cookie(self, user: User) -> str:
        payload = f"{user.id}.{user.session_version}.{int(time.time()) + self.seconds}"
        return f"{payload}.{self._mac('session', payload)}"

    def read(self, cookie: str) -> tuple[int, int] | None:
        """(user id, session version) of a cookie this server signed and that has not expired, else None.
        The caller still checks the version against the user's current one."""
        match = _COOKIE.fullmatch(cookie)
        if match is None:
            return None
        user_id, version, expires, signature = match.groups()
        if not hmac.compare_digest(signature, self._mac("session", f"{user_id}.{version}.{expires}")):
            return None
        if int(expires) < time.time() or not 1 <= int(user_id) <= MAX_ID:
            return None
        return int(user_id), int(version)

    def csrf(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def csrf_matches(self, cookie: str, sent: str) -> bool:
        return hmac.compare_digest(sent.encode(), self.csrf(cookie).encode())
