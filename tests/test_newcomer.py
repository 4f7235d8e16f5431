"""A newcomer's first ten minutes: the README's set-up, the demo, Ctrl-C, and the pictures the README shows.

Proves the items of "A newcomer's first ten minutes, on a stock Mac and a stock Linux" that are about the
first run: the set-up commands (1, 2), no traceback on Ctrl-C (3), a demo that explains itself (5) and a demo
picture rendered from a real run (7). Commands run as real subprocesses; exit codes and output are checked.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness import DemoRun

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _first_screen() -> str:
    return "\n".join(README.splitlines()[:30])


def test_the_first_screen_gives_exactly_the_two_set_up_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _first_screen(), re.DOTALL)
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["uv run imessage-channel demo", "uv run --group test pytest"]


def test_uv_is_the_one_prerequisite_with_installers_that_work_on_stock_systems() -> None:
    screen = _first_screen()
    for installer in ("brew install uv", "install.sh | sh", "pipx install uv"):
        assert installer in screen
    assert "pip install uv &&" not in screen  # fails under PEP 668 on Homebrew, Debian and Ubuntu


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "--group test pytest" in ci


def test_the_demo_and_serve_install_runtime_dependencies_only() -> None:
    assert "default-groups" not in PYPROJECT.get("tool", {}).get("uv", {})
    assert "optional-dependencies" not in PYPROJECT["project"]  # test tools are a dependency group, not an extra
    runtime = " ".join(PYPROJECT["project"]["dependencies"])
    for tool in ("pytest", "hypothesis", "ruff", "freezegun"):
        assert tool not in runtime
        assert any(tool in dep for dep in PYPROJECT["dependency-groups"]["test"])


def _run(argv: list[str], **kw: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "imessage_channel", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,  # type: ignore[arg-type]
    )


def test_ctrl_c_during_the_demo_exits_130_without_a_traceback() -> None:
    proc = _run(["demo"])
    assert proc.stdout is not None
    while "1. started" not in (line := proc.stdout.readline()):  # the server is up: interrupt mid-run
        assert line, "the demo ended before it started the server"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err


def test_ctrl_c_in_the_first_moments_of_serve_prints_no_traceback() -> None:
    proc = _run(["serve"])
    proc.send_signal(signal.SIGINT)  # while the interpreter is still importing
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, -signal.SIGINT)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_the_demo_explains_what_it_shows_and_how_to_run_it_for_real(demo_run: DemoRun) -> None:
    out = demo_run.stdout
    assert "`osascript -` reads the send script" in out
    assert "reply signature" in out and "IMESSAGE_APPEND_SIGNATURE" in out
    closing = out[out.index("For real, on a Mac") :]
    assert [n for n in ("1.", "2.", "3.") if f"\n  {n} " in closing] == ["1.", "2.", "3."]
    assert "\n   Hi Claude! What's on my list for Saturday?\n   </channel>" in out  # as Claude Code renders it


_UUID = re.compile(r"[0-9A-F]{8}(?:-[0-9A-F]{4}){3}-[0-9A-F]{12}")


def _comparable(text: str) -> str:
    """Text with what differs between runs masked (GUIDs, numbers, the temp folder) and no white space."""
    text = re.sub(r"/\S*/imessage-demo-[^/\s]+/", "/tmp/imessage-demo-…/", text)
    text = re.sub(r"\d+", "#", _UUID.sub("<uuid>", text))
    return re.sub(r"\s+", "", text)


def test_the_readmes_demo_picture_shows_what_the_demo_prints_now(demo_run: DemoRun) -> None:
    svg = (ROOT / "docs" / "demo.svg").read_text(encoding="utf-8")
    shown = _comparable(html.unescape("".join(re.findall(r"<text[^>]*>(.*?)</text>", svg, re.DOTALL))))
    assert demo_run.returncode == 0, demo_run.stderr
    for line in demo_run.stdout.splitlines():
        assert _comparable(line) in shown, f"docs/demo.svg is stale (scripts/demo_svg.py); missing: {line!r}"
    assert "![The demo's output](docs/demo.svg)" in _first_screen()


def test_the_latency_chart_stands_beside_the_performance_claim() -> None:
    assert (ROOT / "docs" / "latency.png").is_file()
    claim = README.index("ms from commit to Claude")
    assert "docs/latency.png" in README[claim : claim + 2500]


DEMO_DB = str(ROOT / "imessage_channel" / "data" / "demo.chat.db")

MESSAGES = [
    # (argv, exit code, what the user reads, what it must not say)
    (["messages", "--db", "/etc/passwd"], 2, "is not an SQLite database", "Full Disk Access"),
    (["messages", "--db", "/tmp"], 2, "is a folder, not a database file", "Full Disk Access"),
    (["messages", "--db", "/nonexistent/chat.db"], 2, "No Messages database at", "Traceback"),
    (["messages", "--db", DEMO_DB, "--limit", "0"], 2, "usage: imessage-channel messages", "{serve,demo"),
    (["messages", "--db", DEMO_DB, "--bogus"], 2, "usage: imessage-channel messages", "{serve,demo"),
    (["messages", "--db", DEMO_DB, "--chat", "iMessage;-;nobody"], 1, "no chat has the GUID", "No messages"),
    (["watch", "--db", DEMO_DB, "--from-rowid", "999", "--once"], 0, "is past the newest message", "resuming"),
]


@pytest.mark.parametrize(
    ("argv", "code", "says", "never"),
    MESSAGES,
    ids=["not-a-database", "a-folder", "missing", "limit-0", "unknown-flag", "unknown-chat", "rowid-past-the-end"],
)
def test_a_mistake_gets_a_message_that_names_it(argv: list[str], code: int, says: str, never: str) -> None:
    proc = _run(argv)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert says in out + err
    assert never not in out + err


def test_json_errors_are_json() -> None:
    proc = _run(["messages", "--db", "/nonexistent/chat.db", "--json"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err == ""
    assert "No Messages database" in json.loads(out)["error"]


def _access(state: str, *argv: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")}
    env |= {"IMESSAGE_STATE_DIR": state, "IMESSAGE_DB_PATH": "/nonexistent/chat.db", "LANG": "en_US.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-m", "imessage_channel", "access", *argv], capture_output=True, text=True, env=env
    )
    return done.returncode, done.stdout, done.stderr


def test_the_access_view_changes_nothing_not_even_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "access.json").write_text('{"allowFrom": [')
    os.utime(tmp_path / "access.json", (0, 0))  # long settled: a server would move it aside by now
    code, out, err = _access(str(tmp_path))
    assert code == 2 and out == ""
    assert "is not valid access.json" in err and "fix or delete it" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.json"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "the state directory /etc/passwd is a file, not a folder"),
        (("deny", "abcdef"), "the state directory /etc/passwd is a file"),
    ],
)
def test_a_state_dir_that_is_a_file_is_named_as_such(argv: tuple[str, ...], says: str) -> None:
    code, out, err = _access("/etc/passwd", *argv)
    assert (code, out) == (2, "") and says in err


def test_a_bad_setting_is_refused_with_its_name_and_values() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")} | {"IMESSAGE_ACCESS_MODE": "bogus"}
    done = subprocess.run([sys.executable, "-m", "imessage_channel", "access"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "IMESSAGE_ACCESS_MODE='bogus': expected one of static, dynamic" in done.stderr


def test_the_signature_the_readme_lists_can_be_set(tmp_path: Path) -> None:
    code, _out, err = _access(str(tmp_path), "set", "signature", "— sent from my Mac")
    assert code == 0, err
    assert json.loads((tmp_path / "access.json").read_text())["signature"] == "— sent from my Mac"


def test_the_readme_lists_every_reason_watch_can_print_with_its_fix() -> None:
    from imessage_channel.reasons import reasons_table

    start, end = README.index("<!-- reasons:start -->\n"), README.index("\n<!-- reasons:end -->")
    assert README[start + len("<!-- reasons:start -->\n") : end] == reasons_table()
