"""`imessage-channel demo`, the README's first command: the whole loop on a copy of the bundled chat.db."""

from __future__ import annotations

import re
import sqlite3

from imessage_channel.cli.demo import demo_db_path
from tests.harness import DemoRun


def test_bundled_demo_database_holds_only_example_addresses() -> None:
    conn = sqlite3.connect(f"file:{demo_db_path()}?mode=ro", uri=True)
    handles = [h for (h,) in conn.execute("SELECT id FROM handle")]
    conn.close()
    assert handles
    assert all(h.endswith("@example.com") or re.fullmatch(r"\+1555555\d{4}", h) for h in handles), handles


def test_demo_delivers_one_event_sends_one_reply_and_drops_its_echo(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stderr
    text = demo_run.stdout
    assert "✓ a channel" in text
    assert re.search(
        r'<channel source="imessage" chat_id="iMessage;-;owner@example.com" .*self_chat="true">\n   Hi Claude', text
    )
    assert "dropped as our own echo ✓" in text
    assert re.search(r'osascript "-" "Saturday: .*\\nSent by Claude" "iMessage;-;owner@example.com"', text)


def test_demo_command_leaves_the_bundled_database_untouched(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stderr
    assert "demo finished: 1 event in, 1 send(s) out, 0 duplicate(s)" in demo_run.stdout
    assert demo_run.db_after == demo_run.db_before
