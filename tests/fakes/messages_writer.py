"""The writing modes of the fake `osascript` (tests/fakes/bin/osascript): after a "send", write into the fixture
chat.db `FAKE_OSASCRIPT_DB` the rows Messages writes, through the Messages simulator. The fake imports this module
only when a writing mode runs (or a row waits to turn red), so its other modes stay as fast as before.

See the fake's docstring for the modes (`write`, `write-error`, `write-fail-later`) and environment variables.
"""

from __future__ import annotations

import json
import mimetypes
import os
import sys
from collections.abc import Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.isdir(os.path.join(_ROOT, "imessage_channel")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # a checkout; an installed package is found without this

from imessage_channel.devtools.simulator import AttachmentSpec, ChatRef, MessagesSimulator, RowRef  # noqa: E402

WRITING_MODES = ("write", "write-error", "write-fail-later")


def run(mode: str, argv: Sequence[str], script: str, log_path: str, call: int) -> bool:
    """Turn due rows red (`write-fail-later` countdowns), then write this call's rows if `mode` writes.
    Returns True when the call is answered (exit 0), False to let the fake handle `mode` as usual."""
    owner = os.environ.get("FAKE_OSASCRIPT_OWNER") or "owner@example.com"
    phone = os.environ.get("FAKE_OSASCRIPT_OWNER_PHONE") or None
    sim = MessagesSimulator(os.environ["FAKE_OSASCRIPT_DB"], owner=owner, owner_phone=phone)
    try:
        _fail_due_rows(sim, log_path)
        if mode not in WRITING_MODES:
            return False
        _write(sim, mode, argv, script, log_path, call)
        return True
    finally:
        sim.close()


def _fail_due_rows(sim: MessagesSimulator, log_path: str) -> None:
    """Rows written by `write-fail-later` whose countdown ends with this call get their error."""
    path = log_path + ".later"
    try:
        with open(path, encoding="utf-8") as fh:
            waiting = [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return
    rest = []
    for item in waiting:
        item["after"] -= 1
        if item["after"] <= 0:
            sim.fail_send(RowRef(item["rowid"], item["guid"]), item["error"])
        else:
            rest.append(item)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(item) + "\n" for item in rest)


def _target_chat(sim: MessagesSimulator, target: str, participant: bool) -> ChatRef:
    """The chat the row lands in: `FAKE_OSASCRIPT_CHAT`, else the script's target (a chat GUID; a handle for the
    participant scripts); a DM-shaped GUID no chat has yet is created. Exits 2 for anything else."""
    guid = os.environ.get("FAKE_OSASCRIPT_CHAT") or target
    chat = sim.chat_ref(guid)
    if chat is None and participant:
        row = sim.conn.execute("SELECT guid FROM chat WHERE chat_identifier = ? ORDER BY ROWID", (guid,)).fetchone()
        chat = sim.chat_ref(row[0]) if row else None
    if chat is not None:
        return chat
    parts = guid.split(";", 2)
    if len(parts) != 3 or parts[1] != "-" or not parts[2]:
        sys.stderr.write(f"fake osascript: no chat {guid!r} in FAKE_OSASCRIPT_DB\n")
        sys.exit(2)
    service, _, ident = parts
    return sim.dm(ident, "iMessage" if service == "any" else service, any_guid=service == "any")


def _write(sim: MessagesSimulator, mode: str, argv: Sequence[str], script: str, log_path: str, call: int) -> None:
    """Write the row(s) of this send the way `mode` says, and log the sent row."""
    chat = _target_chat(sim, argv[-1] if argv else "", "participant" in script)
    payload = argv[-2] if len(argv) > 2 else ""
    text, files = payload, []
    if "POSIX file" in script:
        name = os.path.basename(payload)
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        text, files = "", [AttachmentSpec(name, mime, "public.data", data=None)]
    error = int(os.environ.get("FAKE_OSASCRIPT_ERROR") or 22)
    failing = mode == "write-error"
    owner = {sim.owner.lower(), (sim.owner_phone or sim.owner).lower()}
    self_chat = chat.style == 45 and bool(chat.members) and {m.lower() for m in chat.members} <= owner
    with sim.batch():
        row = sim.send_result(
            chat, text, attachments=files, error=error if failing else 0, sent=not failing, delivered=not failing
        )
        if self_chat and not failing:  # the received copy, under another of the owner's aliases if told so
            copy = (
                sim.chat_ref(os.environ["FAKE_OSASCRIPT_COPY_CHAT"])
                if os.environ.get("FAKE_OSASCRIPT_COPY_CHAT")
                else None
            )
            copy = copy or chat
            sim.receive(copy, copy.members[0], text, attachments=files)
    with open(log_path + ".rows", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"call": call, "rowid": row.rowid, "guid": row.guid}) + "\n")
    if mode == "write-fail-later":
        after = int(os.environ.get("FAKE_OSASCRIPT_FAIL_AFTER") or 1)
        with open(log_path + ".later", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"rowid": row.rowid, "guid": row.guid, "after": after, "error": error}) + "\n")
