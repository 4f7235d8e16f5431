"""End-to-end check with the REAL Claude Code CLI: channel events in, `reply` out, nothing lost across restarts.

Opt-in (not run in CI, not part of pytest). What it does:

- builds a fixture chat.db (`fixtures.chatdb_builder`, `MessagesSimulator`) and a throwaway HOME whose
  `.claude.json` is pre-seeded so an offline Claude Code starts without dialogs and with channels enabled
  (`cachedGrowthBookFeatures.tengu_harbor`), and registers our server there with `claude mcp add -s user`
  (the fake `osascript` of `tests/fakes/bin` first on its PATH);
- runs a fake Anthropic Messages API on 127.0.0.1 (stdlib HTTP server, streaming SSE). When the conversation
  holds a `<channel source="imessage" …>` tag it has not answered, it answers with a `tool_use` of
  `mcp__imessage__reply` (`ack: <text>`), then ends the turn with a short text; side requests get a short text.
  Every request body is logged to `api-requests.jsonl`;
- starts `claude --dangerously-load-development-channels server:imessage` in tmux (print mode ignores
  development channels) and confirms the warning with Enter;
- wraps the server in a small stdio proxy (this script's `proxy` sub-command) that timestamps every JSON-RPC
  line, the server's stderr and the signals Claude Code sends (`--no-proxy` runs the server directly).

Checks, per start of Claude Code:
  (a) live: a self-chat text written into chat.db reaches the API as a channel tag, and the reply tool call
      reaches the fake osascript (argv holds `ack: <text>`). Latencies: row commit → tag at the API, and
      `tool_use` sent → osascript ran (mtime of its log);
  (b) restart catch-up: Claude Code is quit (`/exit`), `--texts` texts are written while it is closed, it is
      started again, and each text must reach the API exactly once (counted over every start's conversation).
Also measured per start: Claude Code's `tools/list` request (seen by the proxy) → its debug-file line
`Channel notifications registered` (a notification written a few ms before that line is dropped silently),
that line → the first channel notification, and how Claude Code stopped the server (signals and exit, from the
proxy log and the debug file). `--server-root DIR` runs `imessage_channel` from another tree, e.g. an old
commit exported with `git archive <commit> imessage_channel | tar -x -C DIR`, to compare.

Facts this relies on (Claude Code 2.1.197): channels are gated by a feature flag that offline Claude Code reads
from `cachedGrowthBookFeatures` in `$HOME/.claude.json` (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC,
DISABLE_TELEMETRY and DO_NOT_TRACK turn it off, so they are not set); only `POST /v1/messages?beta=true`
reaches ANTHROPIC_BASE_URL; an event that starts a turn arrives in the user content, one that arrives during
a turn as a `role: "system"` message "A message arrived from imessage while you were working: <channel …>".
`/exit` stops the server with SIGINT, then SIGTERM when it is still running ~100–250 ms later, then SIGKILL
~400 ms after that (or it logs "Cleanup timeout reached" and stops watching); stdin is not closed first.

Prerequisites: tmux, and the CLI: `--claude PATH`, or the copy cached in `scripts/out/claude-code/`
(installed there with node + `npm install @anthropic-ai/claude-code` when missing, unless `--no-install`). The
throwaway HOME sets DISABLE_AUTOUPDATER=1: without it the CLI `npm install -g`-ed a newer copy of itself. A missing
prerequisite prints `skipped: <why>` and exits 0. Exit code 0 only when every check passed.

Run from the repo root:
    uv run --no-sync python scripts/e2e_claude_code.py [--restarts 10] [--texts 3] [--keep] [--no-proxy]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
CACHE = ROOT / "scripts" / "out" / "claude-code"
FAKES_BIN = ROOT / "tests" / "fakes" / "bin"
OWNER = "owner@example.com"
OWNER_PHONE = "+15555550100"
SERVER = "imessage"
REPLY_TOOL = f"mcp__{SERVER}__reply"
FAKE_KEY = "sk-ant-api03-e2e-fake-key-not-a-secret-0123456789abcdefghijklmnopqrstuv"
CONFIRM = "I am using this for local development"
REGISTERED = f'MCP server "{SERVER}": Channel notifications registered'
TAG_RE = re.compile(r'<channel source="imessage"([^>]*)>\n(.*?)\n</channel>', re.S)
ATTR_RE = re.compile(r'(\w+)="([^"]*)"')
DEBUG_LINE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z) \[\w+\] (.*)$")


def log_json(log_file: Path, lock: threading.Lock, /, **record: Any) -> None:
    with lock, log_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": time.time(), **record}) + "\n")


def read_jsonl(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh.read().splitlines() if line.strip()]


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


# -- the stdio proxy (sub-command `proxy`) -----------------------------------------------------------------


def _describe(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        return {"raw": line[:200].decode("utf-8", "replace")}
    out: dict[str, Any] = {k: msg[k] for k in ("id", "method") if k in msg}
    params = msg.get("params") or {}
    if msg.get("method") == "notifications/claude/channel":
        out |= {"content": params.get("content"), "message_id": (params.get("meta") or {}).get("message_id")}
    if msg.get("method") == "tools/call":
        out["tool"] = params.get("name")
    return out


def _pump(src: BinaryIO, dst: BinaryIO, direction: str, log: Callable[..., None]) -> None:
    """Copy JSON-RPC lines from `src` to `dst`, logging each (after relaying it, with the time it was read:
    the log write must not delay the line); close `dst` at EOF."""
    try:
        for line in src:
            read = time.time()
            dst.write(line)
            dst.flush()
            log(t=read, dir=direction, **_describe(line))
    except (BrokenPipeError, OSError, ValueError):
        pass
    log(dir=direction, eof=True)
    with contextlib.suppress(OSError, ValueError):
        dst.close()


def _pump_stderr(src: BinaryIO, log: Callable[..., None]) -> None:
    for line in src:
        log(dir="err", text=line.decode("utf-8", "replace").rstrip("\n"))
        with contextlib.suppress(OSError):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


def run_proxy(log_path: Path, argv: list[str]) -> NoReturn:
    """Run `argv` (the MCP server) in its own session and relay stdio, logging every line with a
    timestamp; forward SIGINT/SIGTERM/SIGHUP to it. Exits with the server's status."""
    lock = threading.Lock()

    def log(**record: Any) -> None:
        log_json(log_path, lock, **record)

    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    log(event="spawn", pid=os.getpid(), child=child.pid)

    def forward(signum: int, _frame: object) -> None:
        log(event="signal", name=signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    assert child.stdin and child.stdout and child.stderr
    threading.Thread(target=_pump, args=(sys.stdin.buffer, child.stdin, "in", log), daemon=True).start()
    out = threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, "out", log))
    err = threading.Thread(target=_pump_stderr, args=(child.stderr, log))
    out.start()
    err.start()
    code = child.wait()
    out.join(1)
    err.join(1)
    log(event="exit", code=code)
    # os._exit, not a return: the stdin thread is blocked in a read, and a normal interpreter shutdown
    # would wait on (then abort over) its lock, keeping Claude Code waiting for this process.
    os._exit(code if code >= 0 else 128 - code)


# -- the fake Anthropic Messages API -------------------------------------------------------------------------


def channel_tags(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every `<channel source="imessage" …>` tag of the conversation, in order: its attributes plus `text`.
    An event that arrives while a turn runs comes as a `role: "system"` message ("A message arrived from
    imessage while you were working: <channel …>"), one that starts a turn inside the user content."""
    tags = []
    for message in messages:
        if message.get("role") == "assistant":
            continue
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else [b.get("text", "") for b in content or []]
        for block in blocks:
            for attrs, text in TAG_RE.findall(block if isinstance(block, str) else ""):
                tags.append({**dict(ATTR_RE.findall(attrs)), "text": text})
    return tags


def assistant_message(model: str, block: dict[str, Any], stop_reason: str) -> dict[str, Any]:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return {
        "id": f"msg_e2e_{time.time_ns()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def sse_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The streaming events of a one-block `message`, in the Messages API's order."""
    block = message["content"][0]
    yield "message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}
    if block["type"] == "text":
        start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
    else:
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}
    yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": stop, "usage": {"output_tokens": 5}}
    yield "message_stop", {"type": "message_stop"}


class FakeAPI:
    """State of the fake model: which tags arrived when (per start of Claude Code), what it answered."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.log_lock = threading.Lock()
        self.cond = threading.Condition()
        self.start_no = 0
        self.arrivals: dict[tuple[int, str], float] = {}  # (start, text) → first request holding its tag
        self.conversations: dict[int, list[dict[str, Any]]] = {}  # start → newest main-loop messages
        self.tool_use_sent: dict[str, float] = {}  # text → when its tool_use response was written
        self.answered: set[str] = set()  # message_ids answered with a tool_use
        self.instructions_seen = False
        self.last_request = 0.0
        self.in_flight = 0
        handler = type("Handler", (_APIHandler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The assistant message for one request, and the text whose tag it answers with `reply`."""
        now = time.time()
        log_json(self.log_path, self.log_lock, path=path, start=self.start_no, body=body)
        model = str(body.get("model", "claude"))
        if not any(t.get("name") == REPLY_TOOL for t in body.get("tools", [])):
            return assistant_message(model, {"type": "text", "text": "ok"}, "end_turn"), None
        messages = body.get("messages", [])
        tags = channel_tags(messages)
        with self.cond:
            self.instructions_seen |= "# MCP Server Instructions" in json.dumps(messages)
            self.conversations[self.start_no] = messages
            for tag in tags:
                self.arrivals.setdefault((self.start_no, tag["text"]), now)
            pending = [t for t in tags if t.get("message_id") not in self.answered]
            if pending:
                self.answered.add(pending[0].get("message_id", ""))
            self.cond.notify_all()
        if not pending:
            return assistant_message(model, {"type": "text", "text": "done"}, "end_turn"), None
        tag = pending[0]
        block = {
            "type": "tool_use",
            "id": f"toolu_e2e_{len(self.answered):04d}",
            "name": REPLY_TOOL,
            "input": {"chat_id": tag.get("chat_id", ""), "text": f"ack: {tag['text']}"},
        }
        return assistant_message(model, block, "tool_use"), tag["text"]

    def wait(self, probe: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (value := probe()) and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(min(left, 0.1))
            return value

    def arrival(self, start: int, text: str, timeout: float) -> float | None:
        return self.wait(lambda: self.arrivals.get((start, text)), timeout)

    def wait_idle(self, quiet: float, timeout: float) -> bool:
        """Wait until no request is in flight and none arrived for `quiet` seconds."""
        return bool(self.wait(lambda: not self.in_flight and time.time() - self.last_request > quiet, timeout))

    def occurrences(self, text: str) -> int:
        """How many times `text` arrived as a channel tag, over every start's conversation."""
        with self.cond:
            return sum(1 for conv in self.conversations.values() for t in channel_tags(conv) if t["text"] == text)

    def close(self) -> None:
        self.httpd.shutdown()


class _APIHandler(BaseHTTPRequestHandler):
    api: FakeAPI
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        with self.api.cond:
            self.api.in_flight += 1
            self.api.last_request = time.time()
        try:
            self._post()
        finally:
            with self.api.cond:
                self.api.in_flight -= 1
                self.api.last_request = time.time()
                self.api.cond.notify_all()

    def _post(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
            log_json(self.api.log_path, self.api.log_lock, path=self.path, start=self.api.start_no, body=body)
            return self._json(200 if "count_tokens" in self.path else 404, {"input_tokens": 10})
        message, answers = self.api.answer(self.path, body)
        if not body.get("stream"):
            self._json(200, message)
        else:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            for event, data in sse_events(message):
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True
        if answers is not None:
            with self.api.cond:
                self.api.tool_use_sent[answers] = time.time()
                self.api.cond.notify_all()

    def do_GET(self) -> None:
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

    def _json(self, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


# -- the fixture, the throwaway HOME and the registration --------------------------------------------------


class Fixture:
    """A fixture chat.db with a self-chat, the server's state dir, and the logs of the fakes."""

    def __init__(self, work: Path, server_root: Path) -> None:
        self.server_root = server_root
        (work / "Messages").mkdir()
        self.db = create_chatdb(work / "Messages" / "chat.db", "sequoia")
        self.sim = MessagesSimulator(self.db, owner=OWNER, owner_phone=OWNER_PHONE)
        self.chat = self.sim.self_chat()
        self.sim.text_self("an old note to self", self.chat, typed_on="mac")
        self.state = work / "state"
        self.osascript_log = work / "osascript.jsonl"
        self.proxy_log = work / "proxy.jsonl"

    def text(self, text: str) -> float:
        """Write a self-chat text typed on the Mac; return the time just after its commit."""
        self.sim.text_self(text, self.chat, typed_on="mac")
        return time.time()

    def server_env(self) -> dict[str, str]:
        return {
            "IMESSAGE_DB_PATH": str(self.db),
            "IMESSAGE_STATE_DIR": str(self.state),
            "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
            "IMESSAGE_LOG_LEVEL": "DEBUG",
            "PATH": f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_OSASCRIPT_LOG": str(self.osascript_log),
            "FAKE_OSASCRIPT_MODE": "ok",
            "FAKE_OSASCRIPT_DB": str(self.db),  # a send writes its row, as Messages does: `reply` confirms it
            "PYTHONPATH": str(self.server_root),
        }


class OsascriptWatch:
    """Reads the fake osascript's log as it grows; a call's time is the log's mtime when it was first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[float, dict[str, Any]]] = []
        self._size = 0

    def poll(self) -> None:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as fh:
            stamp = os.fstat(fh.fileno()).st_mtime
            fh.seek(self._size)
            data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._size += len(complete)
            self.calls += [(stamp, json.loads(line)) for line in complete.splitlines() if line.strip()]

    def matching(self, text: str) -> list[tuple[float, dict[str, Any]]]:
        self.poll()
        wanted = f"ack: {text}"
        return [(t, c) for t, c in self.calls if any(a.split("\n")[0] == wanted for a in c.get("argv", []))]

    def wait_for(self, text: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while not (found := self.matching(text)) and time.monotonic() < deadline:
            time.sleep(0.005)
        return found[0][0] if found else None


def python_exe() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def make_home(home: Path, workspace: Path) -> None:
    """Pre-seed `.claude.json`: no onboarding, the fake key approved, the workspace trusted, channels on."""
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [FAKE_KEY[-20:]], "rejected": []},
        "projects": {str(workspace): {"hasTrustDialogAccepted": True}},
        "cachedGrowthBookFeatures": {"tengu_harbor": True},
    }
    (home / ".claude.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def claude_env(home: Path, api_url: str) -> dict[str, str]:
    """The whole environment of `claude` (nothing else leaks in). DISABLE_AUTOUPDATER keeps it from
    `npm install -g`-ing a newer CLI; the variables that turn feature flags off are deliberately absent."""
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": api_url,
        "ANTHROPIC_API_KEY": FAKE_KEY,
        "DISABLE_AUTOUPDATER": "1",
    }


def register_server(claude: Path, env: dict[str, str], cwd: Path, fixture: Fixture, proxy: bool) -> str:
    """`claude mcp add -s user imessage -e … -- <python> -m imessage_channel serve` (through the proxy)."""
    command = [python_exe(), "-m", "imessage_channel", "serve"]
    if proxy:
        command = [python_exe(), str(SCRIPT), "proxy", "--log", str(fixture.proxy_log), "--", *command]
    pairs = [arg for key, value in fixture.server_env().items() for arg in ("-e", f"{key}={value}")]
    argv = [str(claude), "mcp", "add", "-s", "user", SERVER, *pairs, "--", *command]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"claude mcp add failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout.strip()


# -- Claude Code in tmux ----------------------------------------------------------------------------------


class ClaudeTUI:
    """One interactive `claude` at a time in a private tmux server (its socket in the work dir)."""

    def __init__(self, claude: Path, env: dict[str, str], workspace: Path, socket: Path) -> None:
        self.claude = claude
        self.env = env
        self.workspace = workspace
        self.socket = socket

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=30)

    def start(self, debug_file: Path) -> None:
        argv = [str(self.claude), "--dangerously-load-development-channels", f"server:{SERVER}"]
        argv += ["--debug-file", str(debug_file), "--allowedTools", REPLY_TOOL]
        command = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in self.env.items()), *argv])
        done = self.tmux("new-session", "-d", "-s", "cc", "-x", "200", "-y", "50", "-c", str(self.workspace), command)
        if done.returncode != 0:
            raise RuntimeError(f"tmux new-session failed: {done.stderr}")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "cc").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "cc").returncode == 0

    def confirm(self, timeout: float) -> bool:
        """Wait for the development-channels warning and accept option 1 (preselected) with Enter."""
        deadline = time.monotonic() + timeout
        seen = False
        while time.monotonic() < deadline and self.alive():
            if CONFIRM in self.screen():
                seen = True
                self.tmux("send-keys", "-t", "cc", "Enter")
                time.sleep(1.0)
            elif seen:
                return True
            else:
                time.sleep(0.1)
        return False

    def quit(self, how: str, timeout: float) -> bool:
        """Quit Claude Code (`/exit`, or Ctrl-C twice); kill the tmux session if it is still there after
        `timeout`. True when it exited by itself."""
        if how == "exit":
            self.tmux("send-keys", "-t", "cc", "-l", "/exit")
            time.sleep(0.5)  # let the slash-command menu settle
            self.tmux("send-keys", "-t", "cc", "Enter")
        else:
            self.tmux("send-keys", "-t", "cc", "C-c")
            time.sleep(0.3)
            self.tmux("send-keys", "-t", "cc", "C-c")
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            self.tmux("kill-session", "-t", "cc")
            return False
        return True

    def close(self) -> None:
        self.tmux("kill-server")


def debug_lines(path: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every timestamped line of a Claude Code `--debug-file`."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := DEBUG_LINE_RE.match(line):
            out.append((datetime.fromisoformat(m.group(1)).timestamp(), m.group(2)))
    return out


def wait_debug_line(path: Path, needle: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := [t for t, line in debug_lines(path) if needle in line]:
            return found[0]
        time.sleep(0.1)
    return None


# -- one start of Claude Code ---------------------------------------------------------------------------------


@dataclass
class Start:
    """What one start of Claude Code showed."""

    no: int
    catchup: list[str] = field(default_factory=list)
    arrived: list[str] = field(default_factory=list)
    written_early: int = 0  # notifications written before the debug line 'Channel notifications registered'
    tools_list_to_handler: float | None = None
    handler_to_first_event: float | None = None  # slack: > 0 when the first event came after the handler
    committed: float | None = None  # the live text's commit
    commit_to_event: float | None = None  # … → the server wrote its notification (proxy)
    commit_to_api: float | None = None
    tool_use_to_osascript: float | None = None
    live_ok: bool = False
    stop: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> list[str]:
        return [t for t in self.catchup if t not in self.arrived]


@dataclass
class Run:
    """Everything shared by the starts of one run."""

    work: Path
    fixture: Fixture
    api: FakeAPI
    tui: ClaudeTUI
    osascript: OsascriptWatch
    proxy: bool
    timeout: float
    catchup_wait: float
    quit_how: str


def run_start(run: Run, no: int, catchup: list[str]) -> Start:
    """Start Claude Code, accept the warning, wait for the catch-up texts, run the live check, quit."""
    result = Start(no, catchup)
    run.api.start_no = no
    debug = run.work / f"debug-{no}.log"
    offset = run.fixture.proxy_log.stat().st_size if run.fixture.proxy_log.exists() else 0
    run.tui.start(debug)
    try:
        if not run.tui.confirm(run.timeout * 2):
            result.notes.append("the development-channels warning never showed or never went away")
            (run.work / f"screen-{no}.txt").write_text(run.tui.screen(), encoding="utf-8")
            return result
        registered = wait_debug_line(debug, REGISTERED, run.timeout * 2)
        if registered is None:
            result.notes.append("no 'Channel notifications registered' (is tengu_harbor on?)")
            return result
        wait_catchup(run, result, registered)
        live_check(run, result)
        result.arrived = [t for t in catchup if (no, t) in run.api.arrivals]
    finally:
        run.api.wait_idle(1.0, run.timeout)
        quit_claude(run, result, debug, offset)
    measure_proxy(run, result, debug, offset)
    return result


def wait_catchup(run: Run, result: Start, registered: float) -> None:
    """Wait (up to `catchup_wait` after the handler was registered) for each catch-up text at the API,
    then for its reply, so the live text that follows does not queue behind them."""
    deadline = registered + run.catchup_wait
    for text in result.catchup:
        run.api.arrival(result.no, text, max(0.0, deadline - time.time()))
    for text in result.catchup:
        if (result.no, text) in run.api.arrivals:
            run.osascript.wait_for(text, run.timeout)
    run.api.wait_idle(0.5, run.timeout)


def live_check(run: Run, result: Start) -> None:
    """(a): a text written now reaches the API as a tag; its reply reaches osascript."""
    text = f"e2e live text {result.no}"
    committed = result.committed = run.fixture.text(text)
    at_api = run.api.arrival(result.no, text, run.timeout)
    if at_api is None:
        result.notes.append(f"live text {text!r} never reached the API")
        return
    result.commit_to_api = at_api - committed
    called = run.osascript.wait_for(text, run.timeout)
    sent = run.api.tool_use_sent.get(text)
    if called is None or sent is None:
        result.notes.append(f"the reply to {text!r} never reached osascript")
        return
    result.tool_use_to_osascript = called - sent
    result.live_ok = True


def quit_claude(run: Run, result: Start, debug: Path, offset: int) -> None:
    """Quit Claude Code, wait for the server to be gone, and describe how it was stopped."""
    if not run.tui.quit(run.quit_how, run.timeout):
        result.notes.append(f"Claude Code did not exit after {run.quit_how}; tmux session killed")
    if not wait_server_gone(run, debug, offset):
        result.notes.append(f"the server was not seen exiting within {run.timeout:.0f} s after Claude Code exited")
    events = [(t, f"CC: {line.split(': ', 1)[1]}") for t, line in debug_lines(debug) if _is_stop_line(line)]
    for record in read_jsonl(run.fixture.proxy_log, offset):
        if record.get("event") == "signal":
            events.append((record["t"], f"server got {record['name']}"))
        elif record.get("event") == "exit":
            events.append((record["t"], f"server exit {record['code']}"))
        elif record.get("dir") == "in" and record.get("eof"):
            events.append((record["t"], "server stdin EOF"))
    events.sort()
    if events:
        result.stop = ", ".join(f"{text} +{(t - events[0][0]) * 1000:.0f}ms" for t, text in events)


def wait_server_gone(run: Run, debug: Path, offset: int) -> bool:
    """Before texts are written "while Claude Code is closed", the server must be gone: no process left with
    our state dir in its environment (Linux /proc), and with the proxy, its exit logged."""
    deadline = time.monotonic() + run.timeout
    while time.monotonic() < deadline:
        exited = not run.proxy or any(r.get("event") == "exit" for r in read_jsonl(run.fixture.proxy_log, offset))
        if exited and not server_pids(run.fixture.state):
            return True
        time.sleep(0.1)
    return False


def server_pids(state: Path) -> list[int]:
    """Processes whose environment names `state` as IMESSAGE_STATE_DIR (our server, or its proxy)."""
    marker = f"IMESSAGE_STATE_DIR={state}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
    return pids


def _is_stop_line(line: str) -> bool:
    """Claude Code's lines about stopping our server: 'Sending SIGINT …', 'SIGINT failed, sending SIGTERM …',
    'SIGTERM failed, sending SIGKILL …', '… exited cleanly', 'Cleanup timeout reached …'."""
    stopping = ("SIG" in line, "exited" in line, "Cleanup timeout" in line)
    return line.startswith(f'MCP server "{SERVER}": ') and any(stopping)


def measure_proxy(run: Run, result: Start, debug: Path, offset: int) -> None:
    """From the proxy log and the debug file: tools/list → 'Channel notifications registered'; that line →
    the first channel notification; how many the server wrote before that line; where each lost text was
    written; the live text's commit → its notification."""
    registered = next((t for t, line in debug_lines(debug) if REGISTERED in line), None)
    records = read_jsonl(run.fixture.proxy_log, offset)
    listed = next((r["t"] for r in records if r.get("dir") == "in" and r.get("method") == "tools/list"), None)
    events = [r for r in records if r.get("method") == "notifications/claude/channel"]
    live = next((r["t"] for r in events if r.get("content") == f"e2e live text {result.no}"), None)
    if live is not None and result.committed is not None:
        result.commit_to_event = live - result.committed
    if registered is None or listed is None:
        return
    result.tools_list_to_handler = registered - listed
    if events:
        result.handler_to_first_event = events[0]["t"] - registered
    result.written_early = sum(1 for r in events if r["t"] < registered)
    written = {r.get("content"): r["t"] for r in events}
    for text in result.lost:
        when = written.get(text)
        where = "never written by the server" if when is None else f"written at {ms(when - registered)} ms"
        result.notes.append(f"lost {text!r}: {where} (relative to the 'registered' line)")


# -- the run and its report ------------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    middle = statistics.median(values)
    return f"min {ms(min(values))} / median {ms(middle)} / max {ms(max(values))} ms (n={len(values)})"


TABLE = (
    ("start", 5, lambda s: str(s.no)),
    ("tools/list→handler", 18, lambda s: ms(s.tools_list_to_handler)),
    ("handler→1st event", 17, lambda s: ms(s.handler_to_first_event)),
    ("catch-up", 8, lambda s: f"{len(s.arrived)}/{len(s.catchup)}" if s.catchup else "-"),
    ("pre-reg", 7, lambda s: str(s.written_early)),
    ("commit→event", 12, lambda s: ms(s.commit_to_event)),
    ("commit→API", 10, lambda s: ms(s.commit_to_api)),
    ("tool_use→osascript", 18, lambda s: ms(s.tool_use_to_osascript)),
    ("live", 4, lambda s: "ok" if s.live_ok else "FAIL"),
)
"""Columns of the per-start table (times in ms). `pre-reg`: notifications the server wrote before the debug
line 'Channel notifications registered' (ms resolution; Claude Code reads its pipe later, so such a
notification is not necessarily dropped: the catch-up column says what reached the model)."""


def print_table(starts: list[Start]) -> None:
    print("  ".join(f"{name:>{width}}" for name, width, _ in TABLE) + "   (ms)")
    for s in starts:
        print("  ".join(f"{cell(s):>{width}}" for _, width, cell in TABLE))
    print("\nhow Claude Code stopped the server (relative to its first stop line):")
    for s in starts:
        print(f"  start {s.no}: {s.stop or 'n/a'}")
        for note in s.notes:
            print(f"    note: {note}")


def report(run: Run, starts: list[Start]) -> bool:
    """Print the table and the totals; True when every check passed."""
    print_table(starts)
    texts = [t for s in starts for t in s.catchup] + [f"e2e live text {s.no}" for s in starts]
    duplicated = {t: n for t in texts if (n := run.api.occurrences(t)) > 1}
    replies = {t: n for t in texts if (n := len(run.osascript.matching(t))) > 1}
    lost = [t for s in starts for t in s.lost]
    restarts = len(starts) - 1
    print(f"\nrestarts: {restarts}; catch-up texts written while closed: {sum(len(s.catchup) for s in starts)}")
    print(f"  lost: {len(lost)} {lost if lost else ''}")
    print(f"  duplicated (tag reached the model more than once): {len(duplicated)} {duplicated or ''}")
    print(f"  replied more than once: {len(replies)} {replies or ''}")
    early = sum(s.written_early for s in starts)
    print(f"  notifications written before the 'Channel notifications registered' line: {early}")
    print(f"tools/list → 'Channel notifications registered': {spread(_values(starts, 'tools_list_to_handler'))}")
    print(f"'Channel notifications registered' → first event: {spread(_values(starts, 'handler_to_first_event'))}")
    print(f"live: row commit → notification written: {spread(_values(starts, 'commit_to_event'))}")
    print(f"live: row commit → tag at the API: {spread(_values(starts, 'commit_to_api'))}")
    print(f"live: tool_use sent → osascript ran: {spread(_values(starts, 'tool_use_to_osascript'))}")
    print(f"server instructions reached the model: {'yes' if run.api.instructions_seen else 'NO'}")
    if run.proxy:
        print("(measured through the stdio proxy, one relay hop per line; --no-proxy counts losses without it)")
    ok = all(s.live_ok for s in starts) and not lost and not duplicated and not replies
    ok = ok and run.api.instructions_seen
    print(f"\n{'PASS' if ok else 'FAIL'}")
    return ok


def _values(starts: list[Start], name: str) -> list[float]:
    return [v for s in starts if (v := getattr(s, name)) is not None]


def server_version(root: Path) -> str:
    """The tree the server runs from: its commit, whether imessage_channel/ has local changes, and whether
    the hold-until-tools/list change is in server.py (it mentions tools/list)."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "imessage_channel"], capture_output=True, text=True
    )
    source = (root / "imessage_channel" / "server.py").read_text(encoding="utf-8")
    hold = "yes" if "tools/list" in source else "no"
    commit = head.stdout.strip() if head.returncode == 0 else "not a git checkout"
    changed = " + uncommitted changes in imessage_channel/" if dirty.stdout.strip() else ""
    return f"{root} at {commit}{changed}; 'tools/list' in server.py (hold change): {hold}"


def find_claude(claude: str | None, install: bool) -> Path | str:
    """The `claude` executable: `claude` if given, else the copy cached in scripts/out/claude-code (npm-installed
    there when missing and `install`); or why there is none. Shared with scripts/validate_plugin.py."""
    if claude:
        path = Path(claude)
        return path if os.access(path, os.X_OK) else f"--claude {claude} is not an executable"
    cached = CACHE / "node_modules" / ".bin" / "claude"
    if cached.exists():
        return cached
    if not (shutil.which("node") and shutil.which("npm")):
        return "node and npm are needed to install Claude Code"
    if not install:
        return f"no Claude Code CLI in {CACHE} (and --no-install)"
    print(f"installing @anthropic-ai/claude-code into {CACHE} …", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), "@anthropic-ai/claude-code"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0 or not cached.exists():
        return f"npm install @anthropic-ai/claude-code failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return cached


def setup(work: Path, claude: Path, args: argparse.Namespace) -> Run:
    workspace = work / "workspace"
    workspace.mkdir()
    home = work / "home"
    make_home(home, workspace)
    fixture = Fixture(work, args.server_root)
    api = FakeAPI(work / "api-requests.jsonl")
    env = claude_env(home, api.url)
    print(f"  {register_server(claude, env, workspace, fixture, not args.no_proxy)}")
    tui = ClaudeTUI(claude, env, workspace, work / "tmux.sock")
    osascript = OsascriptWatch(fixture.osascript_log)
    return Run(work, fixture, api, tui, osascript, not args.no_proxy, args.timeout, args.catchup_wait, args.quit)


def drive(run: Run, restarts: int, per_restart: int) -> list[Start]:
    starts = [run_start(run, 0, [])]
    print(f"  start 0: {_progress(starts[-1])}", flush=True)
    for no in range(1, restarts + 1):
        catchup = [f"e2e catch-up {no}.{i}" for i in range(1, per_restart + 1)]
        for text in catchup:
            run.fixture.text(text)
        starts.append(run_start(run, no, catchup))
        print(f"  start {no}: {_progress(starts[-1])}", flush=True)
    return starts


def _progress(s: Start) -> str:
    catchup = f"catch-up {len(s.arrived)}/{len(s.catchup)}, " if s.catchup else ""
    return f"{catchup}live {'ok' if s.live_ok else 'FAIL'}, tools/list→handler {ms(s.tools_list_to_handler)} ms"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claude", help="the claude executable (default: the copy in scripts/out/claude-code)")
    parser.add_argument("--no-install", action="store_true", help="do not npm-install the CLI when missing")
    parser.add_argument("--restarts", type=int, default=10, help="restart catch-up rounds (default 10)")
    parser.add_argument("--texts", type=int, default=3, help="texts written while Claude Code is closed")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step")
    parser.add_argument("--catchup-wait", type=float, default=10.0, help="seconds after the handler for catch-up")
    parser.add_argument("--quit", choices=["exit", "ctrl-c"], default="exit", help="how to quit Claude Code")
    parser.add_argument("--no-proxy", action="store_true", help="run the server directly (no tools/list timing)")
    parser.add_argument(
        "--server-root", type=Path, default=ROOT, help="run imessage_channel from this tree (e.g. an old commit)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, debug files)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["proxy"]:  # proxy --log FILE -- server argv…
        split = argv.index("--")
        return run_proxy(Path(argv[argv.index("--log") + 1]), argv[split + 1 :])
    args = parse_args(argv)
    claude = find_claude(args.claude, not args.no_install) if shutil.which("tmux") else "tmux not found"
    if isinstance(claude, str):
        print(f"skipped: {claude}")
        return 0
    version = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="imessage-e2e-")).resolve()
    print(f"Claude Code {version}; server {server_version(args.server_root.resolve())}\nwork dir: {work}", flush=True)
    run = setup(work, claude, args)
    try:
        starts = drive(run, args.restarts, args.texts)
        return 0 if report(run, starts) else 1
    finally:
        run.tui.close()
        run.api.close()
        run.fixture.sim.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
