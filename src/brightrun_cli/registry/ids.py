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
