"""Settings: every IMESSAGE_* variable read once, validated, with the official plugin's names and defaults.

A table per kind of value: what each accepted spelling means, and that anything else is refused with the
variable's name and the values it takes (a typo must never silently mean the default).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from imessage_channel.settings import Backend, Settings, SettingsError, child_environment


def settings(**env: str) -> Settings:
    return Settings.from_env({"HOME": "/home/me", **env})


def test_defaults_are_the_official_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    s = Settings.from_env({})
    assert s.db_path == Path("/home/me/Library/Messages/chat.db")
    assert s.state_dir == Path("/home/me/.claude/channels/imessage")
    assert (s.static_access, s.allow_sms, s.append_signature, s.relay_permissions) == (False, False, None, True)
    assert (s.catchup_window, s.catchup_max, s.backend, s.log_level) == (timedelta(hours=24), 100, Backend.AUTO, "INFO")


def test_paths_expand_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    s = Settings.from_env({"IMESSAGE_DB_PATH": "~/db/chat.db", "IMESSAGE_STATE_DIR": "/tmp/state"})
    assert (s.db_path, s.state_dir) == (Path("/home/me/db/chat.db"), Path("/tmp/state"))


@pytest.mark.parametrize(
    ("name", "field", "values"),
    [
        ("IMESSAGE_ALLOW_SMS", "allow_sms", {"true": True, "FALSE": False, "1": True, "no": False, "": False}),
        ("IMESSAGE_APPEND_SIGNATURE", "append_signature", {"true": True, "false": False, " off ": False, "": None}),
        ("IMESSAGE_RELAY_PERMISSIONS", "relay_permissions", {"on": True, "off": False, "0": False, "": True}),
        ("IMESSAGE_CONTACTS", "contacts", {"off": False, "on": True, "": True}),
    ],
)
def test_switches(name: str, field: str, values: dict[str, bool | None]) -> None:
    for raw, meaning in values.items():
        assert getattr(settings(**{name: raw}), field) is meaning, raw
    with pytest.raises(SettingsError, match=rf"{name}='maybe': expected true or false"):
        settings(**{name: "maybe"})


@pytest.mark.parametrize(
    ("name", "raw", "field", "meaning"),
    [
        ("IMESSAGE_ACCESS_MODE", "static", "static_access", True),
        ("IMESSAGE_ACCESS_MODE", "dynamic", "static_access", False),
        ("IMESSAGE_APPLESCRIPT_BACKEND", "osascript", "backend", Backend.OSASCRIPT),
        ("IMESSAGE_APPLESCRIPT_BACKEND", "applescript", "backend", Backend.APPLESCRIPT),
        ("IMESSAGE_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("IMESSAGE_CATCHUP_HOURS", "1.5", "catchup_window", timedelta(hours=1.5)),
        ("IMESSAGE_CATCHUP_HOURS", "0", "catchup_window", timedelta(0)),
        ("IMESSAGE_CATCHUP_MAX", "0", "catchup_max", 0),
        ("IMESSAGE_SESSION_NAME", " work ", "session_name", "work"),
    ],
)
def test_values(name: str, raw: str, field: str, meaning: object) -> None:
    assert getattr(settings(**{name: raw}), field) == meaning


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("IMESSAGE_ACCESS_MODE", "bogus", "expected one of static, dynamic"),
        ("IMESSAGE_APPLESCRIPT_BACKEND", "jxa", "expected one of auto, osascript, applescript"),
        ("IMESSAGE_LOG_LEVEL", "loud", "expected one of DEBUG, INFO, WARNING, ERROR"),
        ("IMESSAGE_CATCHUP_HOURS", "a day", "expected a number ≥ 0"),
        ("IMESSAGE_CATCHUP_HOURS", "-1", "expected a number ≥ 0"),
        ("IMESSAGE_CATCHUP_HOURS", "nan", "expected a number ≥ 0"),
        ("IMESSAGE_CATCHUP_MAX", "2.5", "expected a whole number ≥ 0"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_takes(name: str, raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings(**{name: raw})
    assert str(err.value).startswith(f"{name}={raw!r}: {says}")


def test_locales_are_kept_in_precedence_order() -> None:
    s = settings(LANG="en_GB.UTF-8", LC_ALL="C", LC_CTYPE="UTF-8")
    assert s.locales == (("LC_ALL", "C"), ("LANG", "en_GB.UTF-8"), ("LC_CTYPE", "UTF-8"))


def test_a_child_gets_the_environment_without_the_users_settings_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMESSAGE_ALLOW_SMS", "true")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    child = child_environment({"IMESSAGE_DB_PATH": "/x"})
    assert child["SOMETHING_ELSE"] == "kept" and "IMESSAGE_ALLOW_SMS" not in child and child["IMESSAGE_DB_PATH"] == "/x"
    assert child_environment({}, keep_settings=True)["IMESSAGE_ALLOW_SMS"] == "true"


def test_nothing_else_in_the_package_reads_the_environment() -> None:
    package = Path(__file__).resolve().parents[1] / "imessage_channel"
    readers = [
        f"{path.relative_to(package)}: {line.strip()}"
        for path in package.rglob("*.py")
        if path.name != "settings.py"
        for line in path.read_text(encoding="utf-8").splitlines()
        if ("os.environ[" in line or "os.environ.get(" in line or "getenv(" in line) and "PATH" not in line
    ]
    # The demo's recording stand-in script (text written to a file for a child process), nothing else.
    assert readers == ['cli/demo.py: with open(os.environ["IMESSAGE_DEMO_RECORD"], "a", encoding="utf-8") as fh:']
