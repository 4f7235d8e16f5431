"""Handles and chat GUIDs: how iMessage names people and conversations, and one way to compare each.

Owns the two identities chat.db uses: the *handle* (a person's address) and the *chat GUID* (a
conversation), with the chat styles that tell a DM from a group.

A *handle* is an iMessage/SMS address as chat.db stores it in `handle.id`: an email
(`friend@example.com`), an E.164-ish phone number (`+15555550123`), or for SMS a short
code or alphanumeric sender (`12345`, `AMAZON`). The same person can appear with a
service prefix in `message.account` (`E:me@icloud.com`, `p:+1555…`, prefix case varies)
and phone numbers arrive with or without `+`, spaces, dashes or parentheses.

The rule (design §5): emails compare case-insensitively, phone numbers by their digits.
`normalize_handle` is the only implementation of that rule; the gate, owner detection,
the CLI and access.json all call it.

What a *person* types (`access allow`, `group add --allow`, `pair`, entries of access.json) goes through
`parse_handle` instead, the one validation: an email address, or a phone number read with Google's
libphonenumber (the `phonenumbers` port) in the owner's region and stored in E.164 (`+14791234567`).
A national number (`(479) 123-4567`) needs the region: `pick_region` finds it from the owner's own phone
number in chat.db (`+1…` means US), else the country Messages records on `handle.country`, else the locale
(`LC_ALL`, `LC_TELEPHONE`, `LANG`, `LC_CTYPE`, e.g. `en_US.UTF-8`); with none, such a number is refused with
a message asking for the country code. (Not `locale.getlocale()`: Python maps `C.UTF-8` to `en_US`.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

STYLE_GROUP = 43
STYLE_DM = 45
"""`chat.style`: 43 = group chat, 45 = one-to-one (design §4). Anything else is "unknown" (never gated as a DM)."""

CHAT_SERVICES = ("any", "iMessage", "SMS")
"""The service prefixes a chat GUID is found under in chat.db (macOS 26 writes `any`) and tried by the sender,
in that order (BlueBubblesApp/bluebubbles-helper#48, openclaw/imsg#90)."""


@dataclass(frozen=True, slots=True)
class ChatGuid:
    """A chat GUID, `<service>;<-|+>;<identifier>` (`iMessage;-;+15555550123`, `any;+;chat123…`).

    `separator` is `-` for a one-to-one chat and `+` for a group; the same conversation appears under
    several services (`iMessage;-;x` ≡ `any;-;x` ≡ `SMS;-;x`), so `key` (separator and identifier, the
    identifier lowercased) is its service-independent identity. Built with `parse`, which returns None for a
    string of another shape."""

    service: str
    separator: str
    identifier: str

    @classmethod
    def parse(cls, text: str) -> ChatGuid | None:
        """The parts of `text`, or None when it is not `service;-|+;identifier` with both ends non-empty."""
        parts = text.strip().split(";", 2)
        if len(parts) != 3 or parts[1] not in ("-", "+") or not parts[0] or not parts[2]:
            return None
        return cls(*parts)

    @property
    def is_dm(self) -> bool:
        return self.separator == "-"

    @property
    def is_group(self) -> bool:
        return self.separator == "+"

    @property
    def key(self) -> tuple[str, str]:
        """The conversation whatever the service prefix: `("-", "+15555550123")`."""
        return self.separator, self.identifier.lower()

    def with_service(self, service: str) -> str:
        """This chat under another service prefix: `ChatGuid.parse("any;-;x").with_service("iMessage")`."""
        return f"{service};{self.separator};{self.identifier}"

    def __str__(self) -> str:
        return self.with_service(self.service)


def same_chat(a: str, b: str) -> bool:
    """Do two chat GUIDs name one conversation (equal, or equal but for the service prefix)?"""
    if a == b:
        return True
    pa, pb = ChatGuid.parse(a), ChatGuid.parse(b)
    return pa is not None and pb is not None and pa.key == pb.key


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
      (`+1 555 555 0123` → `+15555550123`); a leading `+` is added when absent, so `15555550123` and
      `+15555550123` compare equal. This compares what chat.db stores (E.164, short codes like `12345`);
      it knows no country, so never use it on what a person typed (`(555) 555-0123` would become
      `+5555550123`): that is `parse_handle`'s job;
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


# --- what a person types: parse_handle ------------------------------------------------------------------

HANDLE_HINT = (
    "A handle is an email address (friend@icloud.com) or a phone number with its country code "
    "(+15551234567), as Messages shows it for the person."
)

_EMAIL = re.compile(
    r"^[^@\s;/,<>()\[\]\\\"]{1,64}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})$"
)
_DIAL = re.compile(r"^\+?[\d\s().\-/]+$")

Region = str | None | Callable[[], str | None]
"""A region for national numbers: an ISO 3166 alpha-2 code (`US`), None (unknown), or a callable giving one,
called only when a national number needs it (finding the region may mean opening chat.db)."""


class HandleError(ValueError):
    """Text that cannot be a handle. `str(err)` is a paragraph for the user saying why and what to type;
    `brief` is its first sentence alone (for a log line per entry)."""

    def __init__(self, brief: str, hint: str = HANDLE_HINT) -> None:
        super().__init__(f"{brief} {hint}".strip())
        self.brief = brief


class CountryCodeNeeded(HandleError):
    """A phone number without a country code, and no region known to read it in."""


def valid_region(code: object) -> str | None:
    """`code` upper-cased when libphonenumber knows it as a region (`us` → `US`), else None."""
    if not isinstance(code, str):
        return None
    upper = code.strip().upper()
    return upper if upper in phonenumbers.SUPPORTED_REGIONS else None


def parse_handle(text: str, region: Region = None) -> str:
    """The handle `text` names, in canonical form, or `HandleError` saying why it is none.

    - an email address (`Friend@iCloud.com` → `friend@icloud.com`): one `@`, a dotted domain with a
      top-level domain of letters (so `a@b` and `a@b@c` are refused);
    - a phone number (digits, spaces, `+ ( ) . - /`) → E.164 (`+14791234567`) when libphonenumber finds it
      possible (right length for its country). With a leading `+` (or the region's international prefix)
      it needs no region; a national number (`(479) 123-4567`) is read in `region` and raises
      `CountryCodeNeeded` when there is none; a number without its area code, too short or too long for
      its country (SMS short codes like `12345` included: they are services, not people), or with an
      unknown country code is refused;
    - an account prefix (`E:`, `p:`, `tel:`, `mailto:`) is ignored; anything else (`junk`, a chat GUID)
      is refused.

    `region`: see `Region`. Never consults the network or the clock."""
    shown = text.strip()
    value = strip_account_prefix(shown)
    if not value:
        raise HandleError(f"{text!r} is not a handle: it is empty.")
    if "@" in value:
        email = value.lower()
        if len(email) > 254 or not _EMAIL.match(email):
            raise HandleError(f"{shown!r} is not a handle: it is not a valid email address.")
        return email
    if not _DIAL.match(value) or not any(ch.isdigit() for ch in value):
        raise HandleError(f"{shown!r} is not a handle.")
    return _phone(shown, value, region)


def _phone(shown: str, value: str, region: Region) -> str:
    international = value.startswith("+")
    code: str | None = None
    if not international:
        code = valid_region(region() if callable(region) else region)
        if code is None:
            raise CountryCodeNeeded(
                f"{shown!r} has no country code, and the channel cannot tell which country it is in (no phone "
                "number of yours in chat.db, no region in the locale).",
                f"Type it with its country code: +1 {value} for the US or Canada, +44 … for the UK, and so on.",
            )
    try:
        number = phonenumbers.parse(value, code)
    except NumberParseException as exc:
        raise HandleError(f"{shown!r} is not a handle: {_parse_reason(exc)}.") from None
    where = f"read as a number in {code}" if code and not international else "as an international number"
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != ValidationResult.IS_POSSIBLE:
        digits = sum(ch.isdigit() for ch in value)
        why = _LENGTH.get(verdict, "not a possible phone number")
        if digits <= 6 and verdict != ValidationResult.TOO_LONG:
            why += " (an SMS short code is a service, not a person, and cannot be allowed)"
        raise HandleError(f"{shown!r} is not a handle: {where}, it is {why}.")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


_LENGTH = {
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "missing its area code",
    ValidationResult.INVALID_COUNTRY_CODE: "of no known country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.INVALID_LENGTH: "not of a length numbers there have",
    ValidationResult.TOO_LONG: "too long",
}


def _parse_reason(exc: NumberParseException) -> str:
    return {
        NumberParseException.INVALID_COUNTRY_CODE: "its country code is not one that exists",
        NumberParseException.NOT_A_NUMBER: "it is not a phone number",
        NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short",
        NumberParseException.TOO_SHORT_NSN: "it is too short",
        NumberParseException.TOO_LONG: "it is too long for a phone number",
    }.get(exc.error_type, "it is not a phone number")


# --- the owner's region -----------------------------------------------------------------------------------

_LOCALE = re.compile(r"^[A-Za-z]{2,3}_([A-Za-z]{2})(?:[.@]|$)")


def region_of_number(handle: str) -> str | None:
    """The main region of an E.164 number's country code (`+1…` → `US`, `+44…` → `GB`, `+47…` → `NO`), or
    None for anything else (an email, a non-geographic or unknown code)."""
    if not handle.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(handle, None)
    except NumberParseException:
        return None
    if number.country_code is None:
        return None
    return valid_region(phonenumbers.region_code_for_country_code(number.country_code))


def region_from_locale(locales: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """(region, `VAR=value`) from the first locale variable naming one (`("LANG", "en_US.UTF-8")` → `("US",
    "LANG=en_US.UTF-8")`; `C`, `POSIX`, `C.UTF-8` name none), or None. `locales`: `(name, value)` pairs in
    precedence order, as `Settings.locales` holds them."""
    for name, value in locales:
        m = _LOCALE.match(value)
        if m and (code := valid_region(m.group(1))):
            return code, f"{name}={value}"
    return None


@dataclass(frozen=True, slots=True)
class PhoneRegion:
    """The region national phone numbers are read in (`code`, None when unknown) and where it came from
    (`source`, words for a log line or a message: "your number +15555550100", "LANG=en_US.UTF-8")."""

    code: str | None
    source: str


def pick_region(
    owner: Iterable[str] = (), countries: Iterable[str] = (), locales: Iterable[tuple[str, str]] = ()
) -> PhoneRegion:
    """The owner's region, first found of: their own phone numbers (`owner`: normalised handles, e.g.
    `ChatDB.owner_handles()`; sorted, the first with a known country code), the countries Messages records
    on `handle.country` (`countries`, most frequent first, e.g. `ChatDB.handle_countries()`; `us` → `US`),
    the locale (`region_from_locale(locales)`, `Settings.locales`). `PhoneRegion(None, "unknown")` when none says."""
    for handle in sorted(owner):
        if code := region_of_number(handle):
            return PhoneRegion(code, f"your number {handle}")
    for country in countries:
        if code := valid_region(country):
            return PhoneRegion(code, f"the country Messages records for your contacts ({country})")
    found = region_from_locale(locales)
    if found is not None:
        return PhoneRegion(found[0], found[1])
    return PhoneRegion(None, "unknown")
