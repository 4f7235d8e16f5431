"""`imessage-channel doctor`: check everything the channel needs, and say how to fix what is missing.

Owns the checks and their wording. Each check is a `Check` (pass ✓ / fail ✗ / skipped –) with a
detail and, when it fails, the fix. In order:

1. chat.db readable (Full Disk Access);
2. schema recognised (the columns and tables the reader needs; the macOS release it looks like);
3. owner handles found (the addresses Messages sends from, design §5);
4. self-chat exists (a DM with one of those addresses);
5. an AppleScript runner exists (py-applescript, or `osascript`);
6. Automation permission: only with `--send-test`, which texts the self-chat a test message;
7. state directory permissions (0700 directory, 0600 access.json, every state file owned by the user and a
   file, not a directory);
8. access.json summary, and what silently blocks delivery (a mention-only group with no `mentionPatterns`,
   a regex Python cannot compile, a corrupt file, a file the channel cannot read, with the fix);
9. Claude Code will see the server as a channel: starts `python -m imessage_channel serve` on the same
   chat.db, sends `initialize` (protocol revision 2025-11-25, as Claude Code does), checks
   `capabilities.experimental` has `claude/channel` and `claude/channel/permission` and that stdout
   carries nothing but JSON-RPC, then closes stdin. It never sends `notifications/initialized`, so
   that server delivers and sends nothing, and it runs on a throw-away state directory;
10. contact names: the Contacts stores read (`contacts.Contacts`); skipped when there is no Contacts folder or
    `IMESSAGE_CONTACTS=off` (names are optional), failed when a store exists and cannot be read;
11. sessions: the channel servers running on this Mac (one per Claude Code session), which one reads iMessage
    and which is the default (`multisession.overview`); skipped when none runs.

`run` prints the list and returns 0 when nothing failed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import os
import queue
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from .. import statefile
from ..access import ACCESS_FILE, APPROVED_DIR, Access, DmPolicy
from ..chatdb import FULL_DISK_ACCESS_HELP, ChatDB, ChatDBError, self_chats
from ..clock import SYSTEM
from ..contacts import UNREADABLE_HELP, Contacts
from ..delivery import LOG_FILE, STATE_FILE
from ..handles import pick_region
from ..multisession import overview
from ..outbox import OUTBOX_FILE
from ..sender import AUTOMATION_HELP, ERR_NOT_AUTHORIZED, Sender, SendError, backend_for
from ..settings import Settings, child_environment

PROTOCOL_VERSION = "2025-11-25"
"""The MCP revision Claude Code asks for in `initialize` (design §3; the e2e tests use the same)."""

CHANNEL_CAPABILITIES = ("claude/channel", "claude/channel/permission")
"""`capabilities.experimental` keys Claude Code looks for to register a channel with permission relay."""

HANDSHAKE_TIMEOUT_S = 30.0
"""How long the channel self-check waits for the `initialize` reply (start-up is ≈0.5 s)."""

EXIT_TIMEOUT_S = 10.0
"""How long it waits for the server to exit once stdin is closed."""

TEST_MESSAGE = "imessage-channel doctor: test message. Nothing to do; sending works."

REQUIRED_MESSAGE_COLUMNS = frozenset(
    {"guid", "text", "attributedBody", "handle_id", "service", "is_from_me", "date", "cache_has_attachments"}
)
STATE_FILES = (ACCESS_FILE, statefile.LOCK_FILE, APPROVED_DIR, STATE_FILE, LOG_FILE, OUTBOX_FILE)
"""What the channel keeps in the state directory; each must be the user's own and (but approved/) a file."""

REQUIRED_TABLES = frozenset(
    {"message", "chat", "handle", "chat_message_join", "chat_handle_join", "attachment", "message_attachment_join"}
)

RELEASE_MARKERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("macOS 26 Tahoe", frozenset({"ck_chat_id", "index_state", "is_time_sensitive"})),
    ("macOS 15 Sequoia", frozenset({"associated_message_emoji", "schedule_type", "schedule_state"})),
    ("macOS 14 Sonoma", frozenset({"is_sos", "is_critical", "fallback_hash"})),
    ("macOS 13 Ventura", frozenset({"date_edited", "date_retracted"})),
)
"""`message` columns first seen in each release, newest first (BlueBubbles' per-release sample
databases, design §4; our fixtures in `fixtures/schema/`). No marker: Monterey or older."""


class Status(StrEnum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


SYMBOLS = {Status.PASS: "✓", Status.FAIL: "✗", Status.SKIP: "–"}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: `name`, `status`, what was found (`detail`), and the `fix` when failed."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _pass(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def _skip(name: str, detail: str) -> Check:
    return Check(name, Status.SKIP, detail)


# --- chat.db -----------------------------------------------------------------------------------

CHATDB = "chat.db readable"
SCHEMA = "schema recognised"
OWNER = "owner handles found"
SELF_CHAT = "self-chat exists"
BACKEND = "AppleScript available"
AUTOMATION = "Automation permission"
STATE = "state directory"
ACCESS = "access.json"
CHANNEL = "Claude Code sees a channel"
CONTACTS = "contact names"
SESSIONS = "sessions"


def check_chatdb(path: Path) -> tuple[Check, ChatDB | None]:
    """Open chat.db read-only as the server does; the open `ChatDB` is returned for the next checks."""
    try:
        db = ChatDB(path)
    except ChatDBError as exc:
        return _fail(CHATDB, f"cannot read {path}", str(exc)), None
    return _pass(CHATDB, f"{path} (newest ROWID {db.max_rowid()})"), db


def schema_release(columns: frozenset[str]) -> str:
    """The macOS release whose `message` columns these look like (see `RELEASE_MARKERS`)."""
    for release, markers in RELEASE_MARKERS:
        if columns & markers:
            return release
    return "macOS 12 Monterey or older"


def check_schema(db: ChatDB) -> Check:
    """The tables and `message` columns the reader relies on are there."""
    uri = "file:" + urllib.parse.quote(str(db.path)) + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        return _fail(SCHEMA, f"cannot list tables ({exc})", FULL_DISK_ACCESS_HELP)
    missing = sorted(REQUIRED_TABLES - tables) + sorted(
        f"message.{c}" for c in REQUIRED_MESSAGE_COLUMNS - db.message_columns
    )
    if missing:
        return _fail(
            SCHEMA,
            f"missing {', '.join(missing)}",
            "This is not a Messages database the channel can read. Point IMESSAGE_DB_PATH (or --db) at "
            "~/Library/Messages/chat.db, and report the macOS version if it is that file.",
        )
    return _pass(SCHEMA, f"{schema_release(db.message_columns)} ({len(db.message_columns)} message columns)")


def check_owner(db: ChatDB) -> tuple[Check, frozenset[str]]:
    """The owner's own addresses are known (self-chat and echo detection depend on them)."""
    owner = db.owner_handles()
    if not owner:
        return (
            _fail(
                OWNER,
                "no sent messages or account addresses in chat.db",
                "Sign in to Messages on this Mac (Messages → Settings → iMessage) and send one iMessage from "
                "it; chat.db then records the addresses you send from.",
            ),
            owner,
        )
    return _pass(OWNER, ", ".join(sorted(owner))), owner


def check_self_chat(db: ChatDB, owner: frozenset[str]) -> tuple[Check, str | None]:
    """A self-chat exists: it is where you text Claude and where permission prompts go."""
    if not owner:
        return _skip(SELF_CHAT, "needs the owner handles"), None
    guid = next(iter(self_chats(db, owner)), None)
    if guid is None:
        return (
            _fail(
                SELF_CHAT,
                "no conversation with yourself yet",
                "From your iPhone, text your own phone number or Apple ID email once (start a new message "
                "to yourself); the channel listens in that thread.",
            ),
            None,
        )
    return _pass(SELF_CHAT, guid), guid


# --- sending -----------------------------------------------------------------------------------


def check_backend(
    which: Callable[[str], str | None] = shutil.which,
    has_module: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    choice: str = "auto",
) -> Check:
    """py-applescript is importable, or `osascript` is on PATH (`choice`: `Settings.backend`;
    `IMESSAGE_APPLESCRIPT_BACKEND=osascript` forces the latter, as the server does)."""
    if choice != "osascript" and has_module("applescript"):
        return _pass(BACKEND, "py-applescript (in-process)")
    path = which("osascript")
    if path:
        return _pass(BACKEND, f"osascript at {path}")
    return _fail(
        BACKEND,
        "neither py-applescript nor osascript found",
        "Sending iMessages needs macOS, where /usr/bin/osascript always exists. On a Mac, check PATH for "
        "the program that starts Claude Code.",
    )


def check_automation(self_chat: str | None, sender: Sender) -> Check:
    """Send `TEST_MESSAGE` to self-chat: proves the Automation permission for Messages. Off macOS
    (`sys.platform`), where AppleScript does not exist, it says so instead of trying."""
    platform: str = sys.platform  # read at each call, so a test can set it; a plain str keeps both branches checked
    if platform != "darwin":
        return _fail(
            AUTOMATION,
            "sending needs AppleScript, which only macOS has",
            "Run `imessage-channel doctor --send-test` on the Mac signed in to Messages.",
        )
    if self_chat is None:
        return _skip(AUTOMATION, "needs a self-chat to send the test message to")
    try:
        sender.send(self_chat, TEST_MESSAGE)
    except SendError as exc:
        if exc.code == ERR_NOT_AUTHORIZED:
            return _fail(AUTOMATION, "macOS refused to let this program control Messages", AUTOMATION_HELP)
        return _fail(AUTOMATION, f"the test message was not sent: {exc}", "Open Messages once, then try again.")
    return _pass(AUTOMATION, f"test message sent to {self_chat}; check your phone")


# --- state -------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_state_dir(state: Path) -> Check:
    """The state directory is private (0700, yours) and writable; access.json is 0600. A missing
    directory is fine when it can be created."""
    if not state.exists():
        parent = next((p for p in state.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK | os.X_OK):
            return _pass(STATE, f"{state} does not exist yet; it will be created (0700) on first write")
        return _fail(STATE, f"{state} does not exist and cannot be created", f"mkdir -p -m 700 '{state}'")
    if not state.is_dir():
        return _fail(STATE, f"{state} is not a directory", "Move it away, or set IMESSAGE_STATE_DIR elsewhere.")
    problems: list[str] = []
    fixes: list[str] = []
    if state.stat().st_uid != os.getuid():
        problems.append("owned by another user")
        fixes.append(f"sudo chown -R \"$USER\" '{state}'")
    if _mode(state) & 0o077:
        problems.append(f"mode {_mode(state):o}, readable by others")
        fixes.append(f"chmod 700 '{state}'")
    if not os.access(state, os.W_OK | os.X_OK):
        problems.append("not writable")
    access_file = state / ACCESS_FILE
    if access_file.is_file():
        if _mode(access_file) & 0o077:
            problems.append(f"{ACCESS_FILE} mode {_mode(access_file):o}, readable by others")
            fixes.append(f"chmod 600 '{access_file}'")
        if not os.access(access_file, os.R_OK | os.W_OK):
            problems.append(f"{ACCESS_FILE} not readable and writable")
    for name in STATE_FILES:
        path = state / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and name != APPROVED_DIR:
            problems.append(f"{name} is a directory")
            fixes.append(statefile.unreadable_help(path, IsADirectoryError(errno.EISDIR, "Is a directory")))
        elif st.st_uid != os.getuid() and state.stat().st_uid == os.getuid():
            problems.append(f"{name} belongs to another user (uid {st.st_uid})")
            fixes.append(statefile.unreadable_help(path, PermissionError(errno.EACCES, "Permission denied")))
    if problems:
        return _fail(STATE, f"{state}: " + "; ".join(problems), "; ".join(fixes) or f"Check the owner of {state}.")
    return _pass(STATE, f"{state} (private)")


def check_access(state: Path, allow_sms: bool = False, region: str | None = None, static: bool = False) -> Check:
    """Summarise access.json and flag what silently blocks delivery, including `allowFrom` entries that are
    not handles (the server ignores them; phone numbers without a country code are read in `region`, as the
    server reads them). Reads the file without moving a corrupt one aside (the server would)."""
    path = state / ACCESS_FILE
    sms = allow_sms
    if not path.exists():
        return _pass(ACCESS, "no access.json yet: allowlist policy, nobody allowed (self-chat always works)")
    try:
        access = Access.from_json(json.loads(statefile.read(path) or b"{}"), region)
    except statefile.Unreadable as exc:
        return _fail(
            ACCESS,
            f"cannot read {path} ({statefile.describe_error(exc.cause)}); the channel leaves it as it is: self-chat "
            "still works, everyone else is dropped until it can be read",
            exc.help,
        )
    except ValueError as exc:
        return _fail(
            ACCESS,
            f"{path} is not valid ({exc}); the server will move it aside and use the defaults",
            "Fix or delete the file; `imessage-channel access` shows and rewrites it.",
        )
    summary = (
        f"policy {access.dm_policy.value}, {len(access.allow_from)} allowed, {len(access.groups)} group(s), "
        f"{len(access.pending)} pending code(s)"
        + (", SMS allowed" if sms else "")
        + (", static (read once at start)" if static else "")
    )
    problems: list[str] = []
    fixes: list[str] = []
    for problem in access.problems:
        problems.append(f"{problem} (ignored)")
    if access.problems:
        fixes.append("fix those entries in access.json, or `imessage-channel access remove '<entry>'`")
    for pattern in access.mention_patterns or ():
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"mentionPatterns {pattern!r} is not a valid regex ({exc})")
            fixes.append("imessage-channel access set mentionPatterns '[…]' with valid regexes")
    silent = [guid for guid, g in access.groups.items() if g.require_mention and not access.mention_patterns]
    if silent and access.dm_policy is not DmPolicy.DISABLED:
        problems.append(f"group(s) {', '.join(silent)} need a mention but no mentionPatterns are set")
        fixes.append("imessage-channel access set mentionPatterns '[\"^claude\\\\b\"]'")
    if problems:
        return _fail(ACCESS, summary + "; " + "; ".join(problems), "; ".join(fixes))
    if access.dm_policy is DmPolicy.DISABLED:
        summary += " (only self-chat reaches Claude)"
    return _pass(ACCESS, summary)


# --- the channel self-check --------------------------------------------------------------------


def _pump(stream: Iterable[bytes], out: queue.Queue[bytes | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def check_channel(
    db_path: Path,
    *,
    argv: Sequence[str] | None = None,
    timeout: float = HANDSHAKE_TIMEOUT_S,
) -> Check:
    """Start the server (`argv`, default `python -m imessage_channel serve`) on `db_path`, speak MCP
    `initialize` to it, and check what Claude Code checks (see the module docstring).

    The server gets a throw-away state directory: a running channel's state (access.json, approvals,
    its watermark) is never touched by the check."""
    with tempfile.TemporaryDirectory(prefix="imessage-doctor-") as scratch:
        overrides = {
            "IMESSAGE_DB_PATH": str(db_path),
            "IMESSAGE_STATE_DIR": str(Path(scratch) / "state"),
            "IMESSAGE_LOG_LEVEL": "WARNING",
        }
        env = child_environment(overrides, keep_settings=True)
        return _handshake(list(argv or [sys.executable, "-m", "imessage_channel", "serve"]), env, timeout)


INITIALIZE_REQUEST = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "imessage-channel-doctor", "version": "1"},
    },
}
"""What the self-check sends first, as Claude Code does; the answer carries id 1."""


def _handshake(cmd: list[str], env: dict[str, str], timeout: float) -> Check:
    """Start `cmd`, send `INITIALIZE_REQUEST`, wait at most `timeout` seconds for its answer and judge it."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        return _fail(CHANNEL, f"cannot start {' '.join(cmd)} ({exc})", "Reinstall imessage-channel.")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    errors: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, errors), daemon=True).start()
    try:
        try:
            proc.stdin.write((json.dumps(INITIALIZE_REQUEST) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            pass  # it exited already; reported below
        reply = _initialize_reply(proc, lines, errors, started + timeout, timeout)
        if isinstance(reply, Check):
            return reply
        return _judge(reply, time.monotonic() - started)
    finally:
        _end(proc)


def _initialize_reply(
    proc: subprocess.Popen[bytes],
    lines: queue.Queue[bytes | None],
    errors: queue.Queue[bytes | None],
    deadline: float,
    timeout: float,
) -> dict[str, object] | Check:
    """The server's answer to `INITIALIZE_REQUEST` from its stdout `lines`, or the failed `Check` when it
    exits, writes something that is not JSON-RPC, or is silent until `deadline` (monotonic seconds)."""
    while True:
        try:
            raw = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return _fail(CHANNEL, f"no answer to initialize within {timeout:g} s", _stderr_tail(proc, errors) or "")
        if raw is None:
            proc.wait(timeout=EXIT_TIMEOUT_S)
            return _fail(
                CHANNEL,
                f"the server exited (status {proc.returncode}) before answering initialize",
                _stderr_tail(proc, errors) or "Run `imessage-channel serve` by hand to see why.",
            )
        try:
            msg = json.loads(raw)
        except ValueError:
            return _fail(
                CHANNEL,
                f"stdout carried something that is not JSON-RPC: {raw[:120]!r}",
                "Nothing but JSON-RPC may reach stdout, or Claude Code drops the connection; report this.",
            )
        if isinstance(msg, dict) and msg.get("id") == 1:
            return msg


def _stderr_tail(proc: subprocess.Popen[bytes], errors: queue.Queue[bytes | None]) -> str:
    """The last 600 characters the server wrote to stderr so far (waiting up to a second per chunk once it
    has exited, so its last words are in)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = errors.get(timeout=1.0 if proc.poll() is not None else 0)
        except queue.Empty:
            break
        if chunk is None:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace").strip()[-600:]


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Close the server's stdin (its cue to exit) and wait for it; killed after `EXIT_TIMEOUT_S`."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _judge(reply: dict[str, object], elapsed: float) -> Check:
    result = reply.get("result")
    if not isinstance(result, dict):
        return _fail(
            CHANNEL, f"initialize failed: {reply.get('error')}", "Report this with `imessage-channel --version`."
        )
    capabilities = result.get("capabilities") or {}
    experimental = (capabilities.get("experimental") or {}) if isinstance(capabilities, dict) else {}
    missing = [c for c in CHANNEL_CAPABILITIES if not isinstance(experimental, dict) or c not in experimental]
    if missing:
        return _fail(
            CHANNEL,
            f"the server does not declare {', '.join(missing)}; Claude Code would not register it as a channel",
            "Update imessage-channel.",
        )
    version = result.get("protocolVersion")
    return _pass(CHANNEL, f"initialize answered in {elapsed:.1f} s (protocol {version}), channel + permission relay")


# --- Contacts ----------------------------------------------------------------------------------


def check_sessions(state_dir: Path, now: float) -> Check:
    """The channel servers running on this Mac (one per Claude Code session) and which one reads iMessage.
    Informational: zero sessions is normal when Claude Code is closed; live sessions with nobody reading
    (only for the moment a reader ends) is reported as such."""
    try:
        view = overview(state_dir)
    except OSError as exc:
        folder = state_dir / "sessions"
        return _fail(SESSIONS, f"cannot read {folder}: {exc}", statefile.unreadable_help(folder, exc))
    if not view.live:
        return _skip(SESSIONS, "none running (each Claude Code session with this channel starts one)")
    lines = view.lines(now)
    return _pass(SESSIONS, "; ".join([lines[0], *(line.strip() for line in lines[1:])]))


def check_contacts(contacts: Contacts) -> Check:
    """Whether events will carry `user_name`: skipped when lookups are off or there is no Contacts folder
    (names are optional), failed when a store exists but cannot be read (the fix names Full Disk Access)."""
    if not contacts.enabled:
        return _skip(CONTACTS, "off (IMESSAGE_CONTACTS=off): events name senders by handle only")
    contacts.refresh(force=True)
    problems = contacts.problems
    if not problems:
        return _pass(CONTACTS, contacts.describe())
    if contacts.contact_count == 0 and not contacts.directory.exists():
        return _skip(CONTACTS, f"no Contacts folder at {contacts.directory}: events name senders by handle only")
    return _fail(CONTACTS, contacts.describe(), UNREADABLE_HELP)


# --- running -----------------------------------------------------------------------------------


def run_checks(settings: Settings, *, send_test: bool = False, sender: Sender | None = None) -> list[Check]:
    """All checks in order, for `settings` (chat.db, state dir, backend, SMS, locale). DB-dependent checks are
    skipped when chat.db cannot be opened. `sender` (default: the server's backend choice) is used only with
    `send_test`."""
    db_path, state = settings.db_path, settings.state_dir
    checks: list[Check] = []
    first, db = check_chatdb(db_path)
    checks.append(first)
    self_chat: str | None = None
    region = pick_region(locales=settings.locales)  # the locale, unless chat.db says better
    if db is None:
        checks += [_skip(name, "needs a readable chat.db") for name in (SCHEMA, OWNER, SELF_CHAT)]
    else:
        with db:
            checks.append(check_schema(db))
            owner_check, owner = check_owner(db)
            with contextlib.suppress(ChatDBError):
                region = pick_region(owner, db.handle_countries(), settings.locales)
            checks.append(owner_check)
            self_check, self_chat = check_self_chat(db, owner)
            checks.append(self_check)
    checks.append(check_backend(choice=settings.backend))
    if send_test:
        if sender is None:
            sender = Sender(backend_for(settings.backend), state_dir=state)
        checks.append(check_automation(self_chat, sender))
    else:
        checks.append(_skip(AUTOMATION, "not checked; add --send-test to text yourself a test message"))
    checks.append(check_state_dir(state))
    checks.append(check_access(state, settings.allow_sms, region.code, settings.static_access))
    checks.append(check_contacts(Contacts(settings.addressbook_dir, enabled=settings.contacts, region=region.code)))
    checks.append(check_sessions(state, SYSTEM.wall()))
    if db is None:
        checks.append(_skip(CHANNEL, "needs a readable chat.db"))
    else:
        checks.append(check_channel(db_path))
    return checks


def render(checks: Sequence[Check]) -> str:
    """The report: one `✓ name: detail` line per check, `    fix: …` under each failure, and a verdict."""
    lines = []
    for c in checks:
        lines.append(f"{SYMBOLS[c.status]} {c.name}: {c.detail}")
        if c.status is Status.FAIL and c.fix:
            lines.append(f"    fix: {c.fix}")
    failed = sum(c.status is Status.FAIL for c in checks)
    lines.append("All checks passed." if not failed else f"{failed} check(s) failed.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`imessage-channel doctor [--db P] [--send-test] [--json]`: 0 when no check failed, else 1."""
    settings = args.settings if not args.db else replace(args.settings, db_path=Path(args.db).expanduser())
    checks = run_checks(settings, send_test=args.send_test)
    ok = not any(c.status is Status.FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2, ensure_ascii=False))
    else:
        print(render(checks))
    return 0 if ok else 1
