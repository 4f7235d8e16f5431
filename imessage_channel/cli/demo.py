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
from typing import TextIO

import anyio
from mcp.client.extension import NotificationBinding
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from pydantic import BaseModel

from ..devtools.simulator import MessagesSimulator
from ..server import LISTEN_GRACE_S
from ..settings import child_environment

OWNER = "owner@example.com"
OWNER_PHONE = "+15555550100"
DEMO_TEXT = "Hi Claude! What's on my list for Saturday?"
REPLY_TEXT = "Saturday: 10am at the park with friend@example.com. Don't forget the oat milk."
STAND_IN = """#!{python}
# Stand-in for osascript (imessage-channel demo): records argv and the script, sends nothing, and writes into the
# demo's chat.db what Messages writes after a send to self-chat: the sent row and the received copy.
import json, os, sys
from imessage_channel.devtools.simulator import MessagesSimulator
record = {{"argv": sys.argv[1:], "script": sys.stdin.read()}}
with open(os.environ["IMESSAGE_DEMO_RECORD"], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record) + "\\n")
with MessagesSimulator(os.environ["IMESSAGE_DB_PATH"], owner="{owner}", owner_phone="{phone}") as sim:
    sim.text_self(sys.argv[-2], sim.chat_ref(sys.argv[-1]), typed_on="phone")
"""


class _ChannelEvent(BaseModel):
    content: str
    meta: dict[str, str]


def demo_db_path() -> Path:
    """The bundled demo chat.db (read-only; copy it before writing)."""
    return Path(str(resources.files("imessage_channel") / "data" / "demo.chat.db"))


def _tag(event: _ChannelEvent) -> str:
    """The event as Claude Code shows it to Claude: the tag, the text on its own lines, the closing tag."""
    attrs = " ".join(f'{k}="{v}"' for k, v in event.meta.items())
    return f'<channel source="imessage" {attrs}>\n{event.content}\n</channel>'


def _indent(text: str, prefix: str = "   ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _server_env(work: Path, db: Path, record: Path) -> dict[str, str]:
    """The server's environment: the user's, minus their IMESSAGE_* settings, plus the demo's own."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "osascript"
    stand_in.write_text(STAND_IN.format(python=sys.executable, owner=OWNER, phone=OWNER_PHONE), encoding="utf-8")
    stand_in.chmod(0o755)
    return child_environment(
        {
            "IMESSAGE_DB_PATH": str(db),
            "IMESSAGE_STATE_DIR": str(work / "state"),
            "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
            "IMESSAGE_DEMO_RECORD": str(record),
            "IMESSAGE_LOG_LEVEL": "WARNING",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )


class _Demo:
    """One run: the client session, the events received, what was printed."""

    def __init__(self, work: Path, out: TextIO) -> None:
        self.work, self.out = work, out
        self.db = work / "chat.db"
        self.record = work / "applescript-calls.jsonl"
        self.events: list[tuple[float, _ChannelEvent]] = []
        self.arrived = anyio.Event()

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    async def on_event(self, event: _ChannelEvent) -> None:
        self.events.append((time.perf_counter(), event))
        self.arrived.set()

    async def start(self, session: ClientSession, started: float) -> bool:
        """Step 1: the handshake Claude Code does; True when the server is a channel."""
        init = await session.initialize()
        ready = time.perf_counter() - started
        experimental = (init.capabilities.experimental or {}) if init.capabilities else {}
        ok = "claude/channel" in experimental
        self.say(f"1. started `imessage-channel serve` and initialized in {ready:.2f} s")
        self.say(f"   capabilities.experimental: {sorted(experimental)}  {'✓ a channel' if ok else '✗ NOT a channel'}")
        tools = await session.list_tools()
        self.say(f"   tools: {', '.join(t.name for t in tools.tools)}")
        # Claude Code starts listening for channel events a few ms after it lists the tools; the server holds
        # its first events LISTEN_GRACE_S after tools/list for that. Wait that out so the latency shown is
        # the one of a running session.
        await anyio.sleep(LISTEN_GRACE_S + 0.1)
        self.say()
        return ok

    async def text_in(self) -> _ChannelEvent:
        """Steps 2–3: a self-chat text written as Messages does, and the channel event it becomes."""
        self.say(f'2. Messages writes a self-chat text (as if typed on your iPhone): "{DEMO_TEXT}"')
        with MessagesSimulator(self.db, owner=OWNER, owner_phone=OWNER_PHONE) as sim:
            committed = time.perf_counter()
            sim.text_self(DEMO_TEXT)
        with anyio.fail_after(10):
            await self.arrived.wait()
        received, event = self.events[0]
        self.say(f"3. channel event {(received - committed) * 1000:.1f} ms after the commit, as Claude sees it:")
        self.say(_indent(_tag(event)))
        self.say()
        return event

    async def reply(self, session: ClientSession, event: _ChannelEvent) -> int:
        """Step 4: Claude's `reply`, and its echo written back by Messages; returns events re-delivered."""
        chat_id = event.meta["chat_id"]
        self.say(f'4. Claude answers: reply(chat_id="{chat_id}", text="{REPLY_TEXT}")')
        result = await session.call_tool("reply", {"chat_id": chat_id, "text": REPLY_TEXT})
        text = " ".join(getattr(c, "text", "") for c in result.content)
        self.say(f"   tool result: {text}{' (error)' if result.is_error else ''}")
        # On a Mac, Messages writes the sent reply back into chat.db (in self-chat as a sent and a received
        # copy); the stand-in did, and the tool's "sent" came from finding that row. The echo filter must keep
        # it from coming back to Claude.
        await anyio.sleep(0.5)  # long enough for a wrongly delivered echo to arrive (it takes ~5 ms)
        extra = len(self.events) - 1
        verdict = "dropped as our own echo ✓" if extra == 0 else f"{extra} re-delivered ✗"
        self.say(f"   Messages writes the reply back into chat.db (sent + received copy): {verdict}")
        self.say()
        return extra

    def applescript(self) -> int:
        """Step 5: what the recording stand-in for osascript was asked to run; returns the number of sends."""
        lines = self.record.read_text(encoding="utf-8").splitlines() if self.record.exists() else []
        calls = [json.loads(line) for line in lines]
        self.say("5. what AppleScript was asked to run (on a Mac, this sends the iMessage):")
        for call in calls:
            self.say(f"   osascript {' '.join(json.dumps(a, ensure_ascii=False) for a in call['argv'])}")
        self.say(
            '   `osascript -` reads the send script (`tell application "Messages" to send …`) from stdin; the text\n'
            "   and the chat GUID travel as arguments, never spliced into the script. The last line of the text is\n"
            "   the reply signature (access.json `signature`, off with IMESSAGE_APPEND_SIGNATURE=false)."
        )
        return len(calls)

    def closing(self, ok: bool, sends: int, extra: int) -> None:
        """The verdict and how to run it for real."""
        passed = ok and sends and extra == 0
        self.say(f"\n{'✓' if passed else '✗'} demo finished: 1 event in, {sends} send(s) out, {extra} duplicate(s).")
        self.say("\nFor real, on a Mac signed in to Messages:")
        self.say("  1. give your terminal Full Disk Access (System Settings → Privacy & Security), then run")
        self.say("     `uv run imessage-channel doctor` until every check passes;")
        self.say(
            "  2. install the plugin and start Claude Code with it as a channel (README: Use it with Claude Code);"
        )
        self.say(
            "  3. text yourself from your iPhone: the text reaches Claude, and its answer lands in the same thread."
        )


async def _run(work: Path, out: TextIO) -> int:
    demo = _Demo(work, out)
    shutil.copyfile(demo_db_path(), demo.db)
    env = _server_env(work, demo.db, demo.record)
    params = StdioServerParameters(command=sys.executable, args=["-m", "imessage_channel", "serve"], env=env)
    binding = NotificationBinding(
        method="notifications/claude/channel", params_type=_ChannelEvent, handler=demo.on_event
    )
    demo.say("imessage-channel demo: the full channel loop against a copy of the bundled demo chat.db")
    demo.say(f"  working copy: {demo.db}  (your own Messages data is never read or written)")
    demo.say()
    started = time.perf_counter()
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, notification_bindings=[binding]) as session,
    ):
        ok = await demo.start(session, started)
        event = await demo.text_in()
        extra = await demo.reply(session, event)
    sends = demo.applescript()
    demo.closing(ok, sends, extra)
    return 0 if ok and sends and extra == 0 else 1


def run(out: TextIO | None = None) -> int:
    """Run the demo, printing to `out` (default stdout). Returns 0 when the loop worked end to end, 130 when
    interrupted (Ctrl-C: the server and the temporary folder are cleaned up, no traceback)."""
    with tempfile.TemporaryDirectory(prefix="imessage-demo-") as tmp:
        try:
            return anyio.run(_run, Path(tmp), out or sys.stdout)
        except KeyboardInterrupt:
            return 130
        except BaseExceptionGroup as group:
            if group.subgroup(KeyboardInterrupt) is not None:
                return 130
            raise
