"""Handle normalisation: one way to compare iMessage addresses everywhere.

A *handle* is an iMessage/SMS address as chat.db stores it in `handle.id`: an email
(`friend@example.com`), an E.164-ish phone number (`+15555550123`), or for SMS a short
code or alphanumeric sender (`12345`, `AMAZON`). The same person can appear with a
service prefix in `message.account` (`E:me@icloud.com`, `p:+1555…`, prefix case varies)
and phone numbers arrive with or without `+`, spaces, dashes or parentheses.

The rule (design §5): emails compare case-insensitively, phone numbers by their digits.
`normalize_handle` is the only implementation of that rule; the gate, owner detection,
the CLI and access.json all call it.
"""

from __future__ import annotations

import re

_PREFIX = re.compile(r"^(?:e|p|tel|mailto):", re.IGNORECASE)
_PHONE_CHARS = re.compile(r"^\+?[\d\s().\-]+$")


def strip_account_prefix(value: str) -> str:
    """Remove a `message.account` service prefix (`E:`, `e:`, `p:`, `P:`), or `tel:`/`mailto:`.

    `"E:me@icloud.com"` → `"me@icloud.com"`; values without a prefix are returned stripped.
    """
    return _PREFIX.sub("", value.strip(), count=1)


def is_email(handle: str) -> bool:
    """True when `handle` (after prefix stripping) looks like an email address."""
    return "@" in strip_account_prefix(handle)


def normalize_handle(value: str) -> str:
    """Canonical form of a handle for comparison and storage.

    - strips an account prefix (`E:`, `p:`, `tel:`, `mailto:`) and surrounding white space;
    - emails → lowercased (`Friend@Example.COM` → `friend@example.com`);
    - phone numbers (digits with optional `+`, spaces, dots, dashes, parentheses) → `+` and digits
      (`(555) 555-0123` → `+5555550123`, `+1 555 555 0123` → `+15555550123`); a leading `+` is
      added when absent, so `15555550123` and `+15555550123` compare equal;
    - anything else (SMS short codes with letters, unknown forms) → stripped and lowercased.

    Never raises; the empty string maps to itself.
    """
    v = strip_account_prefix(value)
    if not v:
        return ""
    if "@" in v:
        return v.lower()
    if _PHONE_CHARS.match(v) and any(ch.isdigit() for ch in v):
        return "+" + "".join(ch for ch in v if ch.isdigit())
    return v.lower()


def same_handle(a: str, b: str) -> bool:
    """True when two handles name the same address under `normalize_handle`."""
    na, nb = normalize_handle(a), normalize_handle(b)
    return bool(na) and na == nb
