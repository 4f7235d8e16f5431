"""Settings: every `IMESSAGE_*` environment variable, read once, validated, and handed down.

Owns the environment. `Settings.from_env()` is the only place the package reads `os.environ` for a setting
(and `child_environment` the only place it copies it, for a process it starts). Names and meanings keep the
official plugin's (`IMESSAGE_DB_PATH`, `IMESSAGE_STATE_DIR`, `IMESSAGE_ACCESS_MODE`, `IMESSAGE_ALLOW_SMS`,
`IMESSAGE_APPEND_SIGNATURE`; anthropics/claude-plugins-official `external_plugins/imessage/server.ts`); the
rest are this server's own. A value that is not one of the allowed ones is a `SettingsError` naming the
variable and what it accepts: a typo must not silently mean the default.

| variable | values | default |
|---|---|---|
| `IMESSAGE_DB_PATH` | a path | `~/Library/Messages/chat.db` |
| `IMESSAGE_STATE_DIR` | a path | `~/.claude/channels/imessage` |
| `IMESSAGE_ACCESS_MODE` | `static`, `dynamic` | `dynamic` (access.json re-read on change) |
| `IMESSAGE_ALLOW_SMS` | `true`, `false` | `false` |
| `IMESSAGE_APPEND_SIGNATURE` | `true`, `false` | unset: access.json `appendSignature` decides |
| `IMESSAGE_RELAY_PERMISSIONS` | `on`, `off` | `on` |
| `IMESSAGE_CATCHUP_HOURS` | a number ≥ 0 | `24` |
| `IMESSAGE_CATCHUP_MAX` | a whole number ≥ 0 | `100` |
| `IMESSAGE_APPLESCRIPT_BACKEND` | `auto`, `osascript`, `applescript` | `auto` |
| `IMESSAGE_LOG_LEVEL` | `DEBUG`, `INFO`, `WARNING`, `ERROR` | `INFO` |
| `IMESSAGE_CONTACTS` | `on`, `off` | `on` |
| `IMESSAGE_ADDRESSBOOK_DIR` | a path | `~/Library/Application Support/AddressBook` |
| `IMESSAGE_SESSION_NAME` | a name | the project folder's name |

Booleans also accept `1`/`0`, `yes`/`no`, `on`/`off`, `true`/`false` in any case. The locale variables
(`LOCALE_VARIABLES`), `CLAUDE_PROJECT_DIR`, `__CFBundleIdentifier` and `TERM_PROGRAM` are read here too, for
the phone region, the session name and the app whose macOS permissions the channel runs with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

DEFAULT_DB_PATH = Path("~/Library/Messages/chat.db")
"""Where Messages keeps its database on every macOS release since 10.4."""

DEFAULT_STATE_DIR = Path("~/.claude/channels/imessage")
"""The official plugin's state directory (shared: access.json, approved/)."""

DEFAULT_ADDRESSBOOK_DIR = Path("~/Library/Application Support/AddressBook")
"""The macOS Contacts store (design §8)."""

CATCHUP_HOURS = 24.0
CATCHUP_MAX = 100
"""Defaults of the catch-up window (see `inbound`): texts that arrived while the channel was down are
delivered when dated within the last `CATCHUP_HOURS` and among the newest `CATCHUP_MAX`."""

LOCALE_VARIABLES = ("LC_ALL", "LC_TELEPHONE", "LANG", "LC_CTYPE")
"""The locale variables that can name the phone region, in precedence order (POSIX: `LC_ALL` overrides the
category variable `LC_TELEPHONE`, which overrides `LANG`; `LC_CTYPE` last, as macOS terminals set only it)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """An environment variable holds a value this version does not accept; the message names the variable,
    the value and the allowed values."""


class Backend(StrEnum):
    """`IMESSAGE_APPLESCRIPT_BACKEND`: how AppleScript runs (see `sender`)."""

    AUTO = "auto"  # py-applescript in-process where it imports (macOS), else osascript
    OSASCRIPT = "osascript"  # an `osascript` subprocess per call
    APPLESCRIPT = "applescript"  # py-applescript in-process, always


@dataclass(frozen=True)
class Settings:
    """The channel's settings (see the module table). Build with `from_env`; tests pass their own."""

    db_path: Path = field(default_factory=lambda: DEFAULT_DB_PATH.expanduser())
    state_dir: Path = field(default_factory=lambda: DEFAULT_STATE_DIR.expanduser())
    static_access: bool = False
    allow_sms: bool = False
    append_signature: bool | None = None
    relay_permissions: bool = True
    catchup_window: timedelta = timedelta(hours=CATCHUP_HOURS)
    catchup_max: int = CATCHUP_MAX
    backend: Backend = Backend.AUTO
    log_level: str = "INFO"
    contacts: bool = True
    addressbook_dir: Path = field(default_factory=lambda: DEFAULT_ADDRESSBOOK_DIR.expanduser())
    session_name: str | None = None
    project_dir: Path | None = None
    bundle_id: str | None = None
    """`__CFBundleIdentifier`: the app that started us, as macOS sets it (whose permissions we run with)."""
    term_program: str | None = None
    """`TERM_PROGRAM`: the terminal, when the bundle id says nothing."""
    locales: tuple[tuple[str, str], ...] = ()
    """`(variable, value)` of each locale variable set, in `LOCALE_VARIABLES` order (`("LANG", "en_US.UTF-8")`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment (`os.environ` unless given). Raises `SettingsError`."""
        env = os.environ if env is None else env
        text = _Reader(env)
        return cls(
            db_path=text.path("IMESSAGE_DB_PATH", DEFAULT_DB_PATH),
            state_dir=text.path("IMESSAGE_STATE_DIR", DEFAULT_STATE_DIR),
            static_access=text.choice("IMESSAGE_ACCESS_MODE", ("static", "dynamic"), "dynamic") == "static",
            allow_sms=text.boolean("IMESSAGE_ALLOW_SMS") or False,
            append_signature=text.boolean("IMESSAGE_APPEND_SIGNATURE"),
            relay_permissions=text.boolean("IMESSAGE_RELAY_PERMISSIONS") is not False,
            catchup_window=timedelta(hours=text.number("IMESSAGE_CATCHUP_HOURS", CATCHUP_HOURS)),
            catchup_max=int(text.number("IMESSAGE_CATCHUP_MAX", CATCHUP_MAX, whole=True)),
            backend=Backend(text.choice("IMESSAGE_APPLESCRIPT_BACKEND", tuple(Backend), Backend.AUTO)),
            log_level=text.choice("IMESSAGE_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", upper=True),
            contacts=text.boolean("IMESSAGE_CONTACTS") is not False,
            addressbook_dir=text.path("IMESSAGE_ADDRESSBOOK_DIR", DEFAULT_ADDRESSBOOK_DIR),
            session_name=env.get("IMESSAGE_SESSION_NAME", "").strip() or None,
            project_dir=Path(env["CLAUDE_PROJECT_DIR"]) if env.get("CLAUDE_PROJECT_DIR") else None,
            bundle_id=env.get("__CFBundleIdentifier") or None,
            term_program=env.get("TERM_PROGRAM") or None,
            locales=tuple((name, env[name]) for name in LOCALE_VARIABLES if env.get(name)),
        )


@dataclass(frozen=True)
class _Reader:
    """Typed reads of one environment, each raising `SettingsError` with the variable's name."""

    env: Mapping[str, str]

    def _get(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def path(self, name: str, default: Path) -> Path:
        return Path(self._get(name) or default).expanduser()

    def boolean(self, name: str) -> bool | None:
        """True/False, or None when unset or empty."""
        value = self._get(name).lower()
        if not value:
            return None
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise SettingsError(f"{name}={self._get(name)!r}: expected true or false (also 1/0, yes/no, on/off)")

    def choice(self, name: str, allowed: tuple[str, ...], default: str, *, upper: bool = False) -> str:
        value = self._get(name)
        if not value:
            return default
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            raise SettingsError(f"{name}={self._get(name)!r}: expected one of {', '.join(allowed)}")
        return value

    def number(self, name: str, default: float, *, whole: bool = False) -> float:
        value = self._get(name)
        if not value:
            return default
        kind = "a whole number" if whole else "a number"
        try:
            number = int(value) if whole else float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected {kind} ≥ 0") from None
        if number < 0 or number != number:  # negative, or NaN
            raise SettingsError(f"{name}={value!r}: expected {kind} ≥ 0")
        return float(number)


def child_environment(overrides: Mapping[str, str], *, keep_settings: bool = False) -> dict[str, str]:
    """The environment for a process this package starts: the user's plus `overrides`; without their
    `IMESSAGE_*` settings (the demo's server) unless `keep_settings` (doctor runs the server as Claude Code
    would, with the user's settings)."""
    env = dict(os.environ) if keep_settings else {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")}
    return env | dict(overrides)
