"""Client keys for the guard proxy: the keys file, key hashing, the `Authorization` check and
`alignkit guard add-key` (its options are in `alignkit.safety.proxy_cli`).

The file holds `NAME SHA256` lines (the SHA-256 of the key in hex); keys themselves are never stored.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from pathlib import Path

from alignkit.errors import AlignkitError


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_client_keys(path: str) -> dict[str, str]:
    """hash -> name, from a file of `NAME SHA256HEX` (or bare `SHA256HEX`) lines; # starts a comment."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AlignkitError(f"{path}: client_keys_file: cannot read it ({error})") from None
    keys = {}
    for number, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        digest = words[-1].lower().removeprefix("sha256:")
        if len(words) > 2 or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise AlignkitError(f"{path}:{number}: client_keys_file: expected `NAME SHA256HEX` (alignkit guard "
                                f"add-key writes such lines)")
        keys[digest] = words[0] if len(words) == 2 else digest[:12]
    if not keys:
        raise AlignkitError(f"{path}: client_keys_file: no keys in it (alignkit guard add-key adds one)")
    return keys


def authenticate(authorization: str, keys: dict[str, str]) -> str | None:
    """The name of the client key in an `Authorization: Bearer KEY` header, or None."""
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return keys.get(key_hash(key.strip()))  # a lookup by SHA-256: its timing says nothing about the key


def add_key_command(args) -> int:
    """`alignkit guard add-key`: a new random client key, printed once; only its hash goes into the file."""
    name = args.name
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise AlignkitError(f"add-key: name: letters, digits and _.@- only (up to 64), got {name!r}")
    key = "ak-" + secrets.token_urlsafe(32)
    path = Path(args.client_keys_file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{name} {key_hash(key)}\n")
    print(key)
    print(f"added client key {name!r} to {path} (only its SHA-256 is stored; this is the one time the key is "
          f"shown)", file=sys.stderr)
    return 0
