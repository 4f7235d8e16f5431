"""`imessage-channel watch`: new chat.db rows, live, each with what the channel decides and why.

Owns the answer to "why doesn't my text reach Claude?". It runs the server's own decision path,
`InboundPipeline.poll()`, with `dry_run=True` (nothing is sent and access.json is never written, so a
pairing-policy sender is not issued a code by watching), woken by the same `watcher.Waker` as the
server. One line per row on stdout:

    14:02:03  #1042  iMessage;-;friend@example.com  friend@example.com  text  "Dinner at 8?"
        → dropped: not allowlisted (allow them: imessage-channel access allow friend@example.com)

(on one line). Times are local. `--last N` / `--from-rowid R` first replay older rows, judged as if
they had just arrived (the server's catch-up window and backfill guard look at a row's age; a replay
asks what the gate makes of it); `--once` prints those and exits. Ctrl-C ends the live view with exit
status 0.

Limits, by construction: the watch process does not share the running server's memory, so it cannot
recognise echoes of Claude's own replies (the server drops those; here they show as self-chat rows),
permission answers to requests it never saw, nor rows the server's delivery ledger already holds. Like
the server, it moves a corrupt access.json aside (`AccessStore`) and uses the defaults.
"""

from __future__ import annotations

import argparse
import sys
from datetime import tzinfo
from typing import TextIO

from ..access import AccessStore
from ..chatdb import ChatDB, ChatDBError
from ..handles import pick_region
from ..inbound import Cursor, InboundPipeline, RowDecision
from ..reasons import Verdict
from ..render import QuoteLookup, describe, first_words, sender_label
from ..waker import SAFETY_POLL_S, Waker

PREVIEW_CHARS = 48
"""How much of a message's text a line shows."""

HOLD_RETRY_S = 0.05
"""How soon to look again while a row waits for its chat join (as the server does)."""


DEFAULT_ONCE_ROWS = 20
"""Rows `--once` replays when neither `--last` nor `--from-rowid` is given."""


def decision_words(d: RowDecision) -> str:
    """`delivered (…)`, `dropped: <reason in words> (<fix>)`, or another verdict in words: the words each
    `reasons.Reason` carries, with the row's handle and chat filled into its fix."""
    msg, reason = d.message, d.reason
    if d.verdict is Verdict.DELIVER:
        return f"delivered ({reason.words})"
    if d.verdict is Verdict.DROP:
        fix = reason.fix_for(msg.handle, msg.chat_guid) if reason.fix else ""
        return f"dropped: {reason.words}" + (f" ({fix})" if fix else "")
    if d.verdict is Verdict.PAIR:
        return "pairing: the channel texts them a code; approve it with imessage-channel access pair <code>"
    if d.verdict is Verdict.VERDICT:
        return "permission answer"
    return f"waiting: {reason.words}"


def format_line(d: RowDecision, tz: tzinfo | None = None, quote: QuoteLookup | None = None) -> str:
    """One line for one row: local time, `#ROWID`, chat GUID, sender (`me` for the owner), kind, a
    quoted preview, and `→ decision_words(d)`. `tz` defaults to the machine's zone; `quote` maps a
    message GUID to its text (for what a tapback or reply refers to)."""
    msg = d.message
    when = msg.date.astimezone(tz).strftime("%H:%M:%S") if msg.date else "--:--:--"
    chat = msg.chat_guid or "(no chat yet)"
    preview = first_words(describe(msg, quote), PREVIEW_CHARS)
    return f'{when}  #{msg.rowid}  {chat}  {sender_label(msg)}  {msg.kind.value}  "{preview}"  → {decision_words(d)}'


class Watcher:
    """Prints decisions for rows past `pipeline.watermark` to `out`.

    `drain()` decides every row available now and returns True when the last one is waiting for its
    chat join (the caller looks again soon). A waiting row is printed once, then again when decided.
    """

    def __init__(self, pipeline: InboundPipeline, out: TextIO, tz: tzinfo | None = None) -> None:
        self.pipeline = pipeline
        self.out = out
        self.tz = tz
        self._held_shown: set[int] = set()

    def _quote(self, guid: str) -> str | None:
        target = self.pipeline.db.message_by_guid(guid)
        return target.text if target else None

    def drain(self) -> bool:
        """Print decisions for all rows available now; True when stopped at a held row."""
        while True:
            _, decisions = self.pipeline.poll()
            for d in decisions:
                if d.verdict is Verdict.HOLD:
                    if d.message.rowid in self._held_shown:
                        continue
                    self._held_shown.add(d.message.rowid)
                print(format_line(d, self.tz, self._quote), file=self.out, flush=True)
            if not decisions:
                return False
            if decisions[-1].verdict is Verdict.HOLD:
                return True


def _start_watermark(db: ChatDB, last: int | None, from_rowid: int | None) -> int:
    if from_rowid is not None:
        top = db.max_rowid()
        if from_rowid > top:
            print(
                f"imessage-channel watch: ROWID {from_rowid} is past the newest message (#{top}); "
                "watching for new ones from there",
                file=sys.stderr,
            )
            return top
        return max(0, from_rowid)
    if last is not None:
        recent = db.recent(last)
        return recent[0].rowid - 1 if recent else db.max_rowid()
    return db.max_rowid()


def run(args: argparse.Namespace) -> int:
    """`imessage-channel watch [--db P] [--last N | --from-rowid R] [--once]`. Returns 0 (also on
    Ctrl-C), 2 for a bad argument; `ChatDBError` propagates to `cli.main` (exit 2)."""
    last, from_rowid = args.last, args.from_rowid
    if last is not None and last < 1:
        print("imessage-channel watch: --last must be at least 1", file=sys.stderr)
        return 2
    if args.once and last is None and from_rowid is None:
        last = DEFAULT_ONCE_ROWS
    try:
        return _run(args, last, from_rowid)
    except KeyboardInterrupt:  # Ctrl-C while opening or replaying
        return 0


def _run(args: argparse.Namespace, last: int | None, from_rowid: int | None) -> int:
    settings = args.settings
    with ChatDB(args.db or settings.db_path) as db:
        owner = db.owner_handles()
        pipeline = InboundPipeline(
            # Replayed rows are judged as if they had just arrived, whatever their age: the question
            # is what the gate makes of them. Rows arriving while watching get the age rules.
            cursor=Cursor(watermark=_start_watermark(db, last, from_rowid), replay_until=db.max_rowid()),
            db=db,
            store=AccessStore(
                settings.state_dir,
                static=settings.static_access,
                region=pick_region(owner, db.handle_countries(), settings.locales).code,
            ),
            owner=owner,
            allow_sms=settings.allow_sms,
            dry_run=True,
        )
        if not owner:
            print("note: no owner handles found in chat.db, so self-chat cannot be recognised", file=sys.stderr)
        watcher = Watcher(pipeline, sys.stdout)
        if args.once:
            watcher.drain()
            return 0
        return _live(db, watcher)


def _live(db: ChatDB, watcher: Watcher) -> int:
    waker = Waker(db.path)
    waker.start()
    print(
        f"Watching {db.path} from ROWID {watcher.pipeline.watermark} (Ctrl-C to stop). Echoes of Claude's own "
        "replies cannot be recognised from here; the server drops them.",
        file=sys.stderr,
        flush=True,
    )
    failing = False
    try:
        while True:
            held = False
            try:
                held = watcher.drain()
                failing = False
            except ChatDBError as exc:
                if not failing:
                    print(f"imessage-channel watch: {exc} (retrying)", file=sys.stderr, flush=True)
                failing = True
            waker.wait(HOLD_RETRY_S if held else SAFETY_POLL_S)
    except KeyboardInterrupt:
        return 0
    finally:
        waker.stop()
