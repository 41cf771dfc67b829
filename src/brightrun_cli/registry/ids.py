"""Ids: lowercase ULIDs (26 chars of Crockford base32: 48-bit millisecond time, then
80 random bits), so they sort by creation time and any unique prefix names a row.
Hand-written (a dozen lines) because importing python-ulid costs ~90 ms of CLI start-up."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID = re.compile(f"[{_ALPHABET}]{{26}}")


def new_id() -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_id(text: str) -> bool:
    """Whether `text` is a whole id as new_id makes them."""
    return _ID.fullmatch(text) is not None


def looks_like_id(text: str) -> bool:
    """Whether `text` could be read as an id or id prefix: id characters only, starting
    with a digit (as every id made since 1970 does)."""
    low = text.lower()
    return bool(low) and low[0].isdigit() and all(c in _ALPHABET for c in low)


def check_name(name: str, noun: str, flag: str = "--name") -> str:
    """The one rule for names people give rows: refuse what a later lookup would misread
    (an id or id prefix, a leading '-' read as an option) or what prints misleadingly
    (control and format characters: zero-width spaces, bidi overrides)."""
    import unicodedata

    from brightrun_cli.errors import UsageError

    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in ("Cc", "Cf")})
    if bad:
        raise UsageError(f"{flag} {name!r}: a {noun} name cannot contain control or invisible characters ({', '.join(bad)})",
                         "use letters, digits and punctuation, e.g. --name support-v1")
    if name.startswith("-"):
        raise UsageError(f"{flag} {name!r}: a {noun} name cannot start with '-' (it would be read as an option)",
                         "start it with a letter or digit, e.g. --name support-v1")
    if looks_like_id(name):
        raise UsageError(f"{flag} {name!r}: a {noun} name cannot look like an id (id characters starting with a digit)",
                         f"it would be read as an id prefix; add a letter outside the id alphabet, e.g. --name {noun}-{name}")
    return name
