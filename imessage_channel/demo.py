"""`imessage-channel demo`: the whole channel loop on any machine, against a bundled fixture chat.db.

Owns the demo script and nothing else. It:
1. copies the bundled demo chat.db (`imessage_channel/data/demo.chat.db`) into a temporary folder;
2. starts `imessage-channel serve` on that copy as a subprocess, with a recording stand-in for
   `osascript` first on `PATH` and `IMESSAGE_APPLESCRIPT_BACKEND=osascript` (so even on a Mac with
   py-applescript installed nothing is sent and nothing of the user's data is touched);
3. connects as an MCP client (the official SDK's `ClientSession` over stdio), checks the server
   declares `experimental.claude/channel`;
4. writes a self-chat text into the copy as Messages would (`MessagesSimulator`), and prints the
   channel event it received with the measured commit → notification latency;
5. calls the `reply` tool with the event's `chat_id`, writes the reply back into the copy as Messages
   does (it must not come back to Claude: the echo filter), and prints what AppleScript would have run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from mcp.client.extension import NotificationBinding
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from pydantic import BaseModel

from .simulator import MessagesSimulator

DEMO_TEXT = "Hi Claude! What's on my list for Saturday?"
REPLY_TEXT = "Saturday: 10am at the park with friend@example.com. Don't forget the oat milk."
STAND_IN = """#!{python}
# Recording stand-in for osascript (imessage-channel demo): records argv and the script, sends nothing.
import json, os, sys
record = {{"argv": sys.argv[1:], "script": sys.stdin.read()}}
with open(os.environ["IMESSAGE_DEMO_RECORD"], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record) + "\\n")
"""


class _ChannelEvent(BaseModel):
    content: str
    meta: dict[str, str]


def demo_db_path() -> Path:
    """The bundled demo chat.db (read-only; copy it before writing)."""
    return Path(str(resources.files("imessage_channel") / "data" / "demo.chat.db"))


def _tag(event: _ChannelEvent) -> str:
    attrs = " ".join(f'{k}="{v}"' for k, v in event.meta.items())
    return f'<channel source="imessage" {attrs}>{event.content}</channel>'


async def _run(work: Path, out: Any) -> int:
    db = work / "chat.db"
    shutil.copyfile(demo_db_path(), db)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "osascript"
    stand_in.write_text(STAND_IN.format(python=sys.executable), encoding="utf-8")
    stand_in.chmod(0o755)
    record = work / "applescript-calls.jsonl"
    # The server inherits the environment (as under Claude Code) but none of the user's IMESSAGE_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")} | {
        "IMESSAGE_DB_PATH": str(db),
        "IMESSAGE_STATE_DIR": str(work / "state"),
        "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
        "IMESSAGE_DEMO_RECORD": str(record),
        "IMESSAGE_LOG_LEVEL": "WARNING",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "imessage_channel", "serve"], env=env)
    events: list[tuple[float, _ChannelEvent]] = []
    arrived = anyio.Event()

    async def on_event(event: _ChannelEvent) -> None:
        events.append((time.perf_counter(), event))
        arrived.set()

    binding = NotificationBinding(method="notifications/claude/channel", params_type=_ChannelEvent, handler=on_event)
    print("imessage-channel demo: the full channel loop against a copy of the bundled demo chat.db", file=out)
    print(f"  working copy: {db}  (your own Messages data is never read or written)\n", file=out)
    started = time.perf_counter()
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, notification_bindings=[binding]) as session,
    ):
        init = await session.initialize()
        ready = time.perf_counter() - started
        experimental = (init.capabilities.experimental or {}) if init.capabilities else {}
        ok = "claude/channel" in experimental
        print(f"1. started `imessage-channel serve` and initialized in {ready:.2f} s", file=out)
        print(
            f"   capabilities.experimental: {sorted(experimental)}  {'✓ a channel' if ok else '✗ NOT a channel'}",
            file=out,
        )
        tools = await session.list_tools()
        print(f"   tools: {', '.join(t.name for t in tools.tools)}\n", file=out)
        await anyio.sleep(0.2)  # let the server finish its first read before the "phone" texts

        print(f'2. Messages writes a self-chat text (as if typed on your iPhone): "{DEMO_TEXT}"', file=out)
        with MessagesSimulator(db, owner="owner@example.com", owner_phone="+15555550100") as sim:
            committed = time.perf_counter()
            sim.text_self(DEMO_TEXT)
        with anyio.fail_after(10):
            await arrived.wait()
        received, event = events[0]
        print(
            f"3. channel event after {(received - committed) * 1000:.1f} ms (commit → notification):",
            file=out,
        )
        print(f"   {_tag(event)}\n", file=out)

        chat_id = event.meta["chat_id"]
        print(f'4. Claude answers: reply(chat_id="{chat_id}", text="{REPLY_TEXT}")', file=out)
        result = await session.call_tool("reply", {"chat_id": chat_id, "text": REPLY_TEXT})
        text = " ".join(getattr(c, "text", "") for c in result.content)
        print(f"   tool result: {text}{' (error)' if result.is_error else ''}\n", file=out)
        # On a Mac, Messages writes the sent reply back into chat.db (in self-chat as a sent and a
        # received copy). Simulate that: the echo filter must keep it from coming back to Claude.
        with MessagesSimulator(db, owner="owner@example.com", owner_phone="+15555550100") as sim:
            sim.text_self(f"{REPLY_TEXT}\nSent by Claude")
        await anyio.sleep(0.5)  # long enough for a wrongly delivered echo to arrive (it takes ~5 ms)
        extra = len(events) - 1
        print(
            f"   Messages writes the reply back into chat.db (sent + received copy): "
            f"{'dropped as our own echo ✓' if extra == 0 else f'{extra} re-delivered ✗'}\n",
            file=out,
        )
    calls = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()] if record.exists() else []
    print("5. what AppleScript was asked to run (on a Mac, this sends the iMessage):", file=out)
    for call in calls:
        print(f"   osascript {' '.join(json.dumps(a, ensure_ascii=False) for a in call['argv'])}", file=out)
    print(
        f"\n{'✓' if ok and calls and extra == 0 else '✗'} demo finished: 1 event in, {len(calls)} send(s) out, "
        f"{extra} duplicate(s).",
        file=out,
    )
    return 0 if ok and calls and extra == 0 else 1


def run(out: Any = None) -> int:
    """Run the demo, printing to `out` (default stdout). Returns 0 when the loop worked end to end."""
    with tempfile.TemporaryDirectory(prefix="imessage-demo-") as tmp:
        return anyio.run(_run, Path(tmp), out or sys.stdout)
