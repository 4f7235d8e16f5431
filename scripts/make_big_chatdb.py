"""Build a large synthetic chat.db for benchmarks: Apple's real schema, a realistic shape, ≥ 1M rows.

Owns the benchmark database generator (not a fixture: never commit its output; write it under /tmp).
The schema comes from `fixtures.chatdb_builder.create_chatdb`; the rows follow the shapes in design §4
(checked against the real Ventura rows in `fixtures/reference`):

- `--chats` chats: one self-chat (`iMessage;-;owner@example.com`), ~85 % iMessage DMs (style 45), ~5 % SMS
  DMs (`SMS;-;+1555555xxxx`), ~10 % groups (style 43, `iMessage;+;chat<18 digits>`, 3–8 members);
  message counts per chat are heavy-tailed (a few busy threads, many quiet ones);
- `--messages` rows, ROWID ascending with `date` (Apple epoch nanoseconds) spread over 5 years ending
  2026-06-01 UTC; ~40 % `is_from_me = 1` with `account` `E:owner@example.com` (`p:+15555550100` for SMS)
  and `destination_caller_id` set on every row; 70 % of rows carry their text only in `attributedBody`
  (typedstream, `text` NULL), the rest in both; 5 % tapbacks (`associated_message_type` 2000–2005,
  `associated_message_guid` `p:0/<earlier GUID of the same chat>`); 3 % with an attachment
  (`attachment` + `message_attachment_join`, one U+FFFC plus a file-transfer run in the body);
- every message has its `chat_message_join` row with `message_date` copied, and `cache_roomnames` set
  (the room name for groups) as Apple's `after_insert_on_chat_message_join` trigger would.

Only `example.com` addresses and `+1555555xxxx` numbers appear. The output is a pure function of
`--seed` (`random.Random(seed)`, GUIDs drawn from it). For speed the attributedBody blobs are encoded once
for a pool of distinct texts and reused; the load runs with `synchronous=OFF`, `journal_mode=OFF`, a large
page cache, `executemany` in one transaction, and the cache_roomnames trigger dropped during the load
(re-created afterwards, verbatim from the schema); the database is switched to WAL at the end, as Messages
runs it.

Usage (from the repo root): `uv run python scripts/make_big_chatdb.py --out /tmp/big/chat.db`.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.chatdb_builder import VERSIONS, create_chatdb, message_columns, register_trigger_stubs
from imessage_channel.appletime import to_apple_ns
from imessage_channel.devtools.typedstream_writer import encode_attributed_body
from imessage_channel.typedstream import AttributeRun, utf16_len

OWNER = "owner@example.com"
OWNER_PHONE = "+15555550100"
END = datetime(2026, 6, 1, tzinfo=UTC)
SPAN = timedelta(days=5 * 365)
TEXT_POOL = 4000
TAPBACK_POOL = 300
TAPBACK_VERBS = ("Loved", "Liked", "Disliked", "Laughed at", "Emphasized", "Questioned")
CHUNK = 50_000
PART = "__kIMMessagePartAttributeName"
TRANSFER = "__kIMFileTransferGUIDAttributeName"
ROOMNAMES_TRIGGER = "after_insert_on_chat_message_join"

MESSAGE_FIELDS = (
    "ROWID",
    "guid",
    "text",
    "attributedBody",
    "handle_id",
    "service",
    "account",
    "account_guid",
    "date",
    "date_read",
    "date_delivered",
    "is_delivered",
    "is_finished",
    "is_from_me",
    "is_sent",
    "is_read",
    "cache_has_attachments",
    "cache_roomnames",
    "destination_caller_id",
    "associated_message_guid",
    "associated_message_type",
    "associated_message_range_length",
    "part_count",
    "date_edited",
    "date_retracted",
)
"""`message` columns written, in order (those missing from a version's schema are skipped)."""

_VOCABULARY = (
    "ok sure thanks see you tomorrow tonight lunch dinner coffee meeting call later now running late on my way "
    "home work office train bus traffic weekend saturday sunday park beach movie game score kids school pickup "
    "groceries milk bread eggs recipe oven birthday party gift flight hotel airport gate delayed landed photo "
    "link deadline draft review report budget invoice slides standup sprint deploy bug fix release happy "
    "great awesome sounds good perfect love it haha lol yes no maybe idk sorry congrats weather rain snow sun"
)
WORDS = tuple(_VOCABULARY.split())
EXTRAS = ("🙂", "👍", "🎉", "❤️", "😂", "🚗", "☕", "é", "ü", "—", "…", "日本", "🇫🇷")
ATTACHMENT_KINDS = (
    ("IMG_{n}.heic", "image/heic", "public.heic"),
    ("IMG_{n}.jpeg", "image/jpeg", "public.jpeg"),
    ("IMG_{n}.PNG", "image/png", "public.png"),
    ("IMG_{n}.MOV", "video/quicktime", "com.apple.quicktime-movie"),
    ("Audio Message.caf", "audio/x-caf", "com.apple.coreaudio-format"),
    ("document-{n}.pdf", "application/pdf", "com.adobe.pdf"),
)


@dataclass(slots=True)
class ChatSpec:
    """One generated chat: ROWID, GUID, style, service, member handle ROWIDs, room name (groups)."""

    rowid: int
    guid: str
    style: int
    service: str
    members: list[int]
    room_name: str | None
    recent: list[str] = field(default_factory=list)


def guid(rng: random.Random) -> str:
    """An uppercase UUID-shaped GUID drawn from `rng` (deterministic, unlike uuid4)."""
    h = f"{rng.getrandbits(128):032X}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_text(rng: random.Random) -> str:
    """A chat-like text: 1–60 words (a few up to 400, longer than 256 UTF-16 units), some emoji."""
    n = rng.choice((1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 60)) if rng.random() > 0.02 else rng.randint(80, 400)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.25:
        words.insert(rng.randrange(len(words) + 1), rng.choice(EXTRAS))
    text = " ".join(words)
    return text[0].upper() + text[1:]


def body(text: str, transfer_guid: str | None = None) -> bytes:
    """`attributedBody` of `text` (mutable string, part 0); with `transfer_guid`, one leading U+FFFC."""
    if transfer_guid is None:
        return encode_attributed_body(text, [AttributeRun(0, utf16_len(text), {PART: 0})], mutable=True)
    runs = [AttributeRun(0, 1, {PART: 0, TRANSFER: transfer_guid})]
    if text:
        runs.append(AttributeRun(1, utf16_len(text), {PART: 1}))
    return encode_attributed_body("\ufffc" + text, runs, mutable=True)


class Builder:
    """Generates and loads the rows; see the module docstring for the shape."""

    def __init__(self, conn: sqlite3.Connection, version: str, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        cols = message_columns(version)
        self.msg_cols = [c for c in MESSAGE_FIELDS if c == "ROWID" or c in cols]
        self.handles: dict[tuple[str, str], int] = {}
        self.chats: list[ChatSpec] = []
        self.account_guid = {"iMessage": guid(rng), "SMS": guid(rng)}

    def handle(self, address: str, service: str) -> int:
        key = (address, service)
        if key not in self.handles:
            digits = address.lstrip("+") if "@" not in address else None
            cur = self.conn.execute(
                "INSERT INTO handle (id, country, service, uncanonicalized_id) VALUES (?, 'US', ?, ?)",
                (address, service, digits),
            )
            self.handles[key] = int(cur.lastrowid or 0)
        return self.handles[key]

    def add_chat(self, guid_: str, style: int, service: str, ident: str, members: list[str], name: str) -> None:
        room = ident if style == 43 else None
        cur = self.conn.execute(
            "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, room_name,"
            " account_login, display_name, group_id, last_addressed_handle) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                guid_,
                style,
                3,
                self.account_guid[service],
                ident,
                service,
                room,
                f"E:{OWNER}" if service == "iMessage" else f"P:{OWNER_PHONE}",
                name,
                guid(self.rng),
                OWNER if service == "iMessage" else OWNER_PHONE,
            ),
        )
        rowid = int(cur.lastrowid or 0)
        ids = [self.handle(m, service) for m in members]
        self.conn.executemany(
            "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)", [(rowid, h) for h in ids]
        )
        self.chats.append(ChatSpec(rowid, guid_, style, service, ids, room))

    def make_chats(self, n: int) -> None:
        """Self-chat, then DMs (iMessage and SMS) and groups over a pool of example contacts."""
        rng = self.rng
        phones = [f"+1555555{i:04d}" for i in range(1000, 10000)]
        emails = [f"contact{i}@example.com" for i in range(20000)]
        rng.shuffle(phones)
        rng.shuffle(emails)
        self.add_chat(f"iMessage;-;{OWNER}", 45, "iMessage", OWNER, [OWNER], "")
        n_groups = max(1, n // 10)
        n_sms = max(1, n // 20)
        n_dm = n - 1 - n_groups - n_sms
        contacts = [phones.pop() if rng.random() < 0.6 else emails.pop() for _ in range(n_dm)]
        for c in contacts:
            self.add_chat(f"iMessage;-;{c}", 45, "iMessage", c, [c], "")
        for _ in range(n_sms):
            p = phones.pop()
            self.add_chat(f"SMS;-;{p}", 45, "SMS", p, [p], "")
        for g in range(n_groups):
            ident = "chat" + "".join(rng.choice("0123456789") for _ in range(18))
            members = rng.sample(contacts, rng.randint(3, 8))
            name = f"Group {g}" if rng.random() < 0.5 else ""
            self.add_chat(f"iMessage;+;{ident}", 43, "iMessage", ident, members, name)

    def rows(self, n: int) -> Iterator[tuple[list[tuple], list[tuple], list[tuple], list[tuple]]]:
        """Yield chunks of (message rows, chat_message_join rows, attachment rows, attachment joins)."""
        rng = self.rng
        pool = [make_text(rng) for _ in range(TEXT_POOL)]
        bodies = [body(t) for t in pool]
        tapback_pool = [f"{verb} “{pool[j][:40]}”" for verb in TAPBACK_VERBS for j in range(TAPBACK_POOL)]
        tapback_bodies = [body(t) for t in tapback_pool]
        weights = [rng.paretovariate(1.2) for _ in self.chats]
        chat_seq = rng.choices(range(len(self.chats)), weights=weights, k=n)
        start_ns = to_apple_ns(END - SPAN)
        step = (to_apple_ns(END) - start_ns) // n
        msgs: list[tuple] = []
        joins: list[tuple] = []
        atts: list[tuple] = []
        ajoins: list[tuple] = []
        att_rowid = 0
        for i in range(n):
            rowid = i + 1
            chat = self.chats[chat_seq[i]]
            date = start_ns + i * step + rng.randrange(step)
            mine = rng.random() < 0.40
            sms = chat.service == "SMS"
            # a DM's rows carry the other party's handle; a group's sent rows carry 0
            handle_id = chat.members[0] if chat.style == 45 else 0 if mine else rng.choice(chat.members)
            k = rng.randrange(len(pool))
            text: str | None = pool[k]
            blob: bytes | None = bodies[k]
            assoc_guid: str | None = None
            assoc_type = 0
            has_att = 0
            r = rng.random()
            if r < 0.05 and chat.recent:
                assoc_type = 2000 + rng.randrange(6)
                assoc_guid = f"p:0/{rng.choice(chat.recent)}"
                t = (assoc_type - 2000) * TAPBACK_POOL + rng.randrange(TAPBACK_POOL)
                text, blob = tapback_pool[t], tapback_bodies[t]
            elif r < 0.08:
                has_att = 1
                att_rowid += 1
                att_guid = guid(rng)
                fname, mime, uti = rng.choice(ATTACHMENT_KINDS)
                name = fname.format(n=rng.randint(1000, 9999))
                caption = pool[k] if rng.random() < 0.3 else ""
                text = "\ufffc" + caption
                blob = body(caption, att_guid)
                atts.append(
                    (
                        att_rowid,
                        att_guid,
                        att_guid,
                        date // 10**9,
                        f"~/Library/Messages/Attachments/{att_guid[:2].lower()}/{att_guid[2:4].lower()}/{att_guid}/{name}",
                        uti,
                        mime,
                        5,
                        int(mine),
                        name,
                        rng.randint(10_000, 5_000_000),
                    )
                )
                ajoins.append((rowid, att_rowid))
            g = guid(rng)
            if not assoc_type:
                chat.recent.append(g)
                if len(chat.recent) > 8:
                    del chat.recent[0]
            body_only = rng.random() < 0.70
            values = {
                "ROWID": rowid,
                "guid": g,
                "text": None if body_only else text,
                "attributedBody": blob,
                "handle_id": handle_id,
                "service": chat.service,
                "account": (f"p:{OWNER_PHONE}" if sms else f"E:{OWNER}") if mine else None,
                "account_guid": self.account_guid[chat.service],
                "date": date,
                "date_read": 0 if mine else date + 30 * 10**9,
                "date_delivered": date + 10**9 if mine else 0,
                "is_delivered": 1,
                "is_finished": 1,
                "is_from_me": int(mine),
                "is_sent": int(mine),
                "is_read": int(not mine),
                "cache_has_attachments": has_att,
                "cache_roomnames": chat.room_name,
                "destination_caller_id": OWNER_PHONE if sms else OWNER,
                "associated_message_guid": assoc_guid,
                "associated_message_type": assoc_type,
                "associated_message_range_length": len(pool[k]) if assoc_type else 0,
                "part_count": 1 + has_att if text and text != "\ufffc" else 1,
                "date_edited": 0,
                "date_retracted": 0,
            }
            msgs.append(tuple(values[c] for c in self.msg_cols))
            joins.append((chat.rowid, rowid, date))
            if len(msgs) >= CHUNK:
                yield msgs, joins, atts, ajoins
                msgs, joins, atts, ajoins = [], [], [], []
        if msgs:
            yield msgs, joins, atts, ajoins

    def load(self, n: int) -> None:
        marks = ", ".join("?" * len(self.msg_cols))
        msg_sql = f"INSERT INTO message ({', '.join(self.msg_cols)}) VALUES ({marks})"
        for msgs, joins, atts, ajoins in self.rows(n):
            self.conn.executemany(msg_sql, msgs)
            self.conn.executemany(
                "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?, ?, ?)", joins
            )
            self.conn.executemany(
                "INSERT INTO attachment (ROWID, guid, original_guid, created_date, filename, uti, mime_type,"
                " transfer_state, is_outgoing, transfer_name, total_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                atts,
            )
            self.conn.executemany(
                "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)", ajoins
            )


def build(out: Path, messages: int, chats: int, seed: int, version: str) -> dict[str, float]:
    """Create `out` and fill it; returns timings (s) and counts. Raises FileExistsError if `out` exists."""
    t0 = time.perf_counter()
    create_chatdb(out, version, wal=False)
    conn = sqlite3.connect(out, isolation_level=None)
    register_trigger_stubs(conn)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB of page cache: the unique GUID index stays in memory
    conn.execute("PRAGMA temp_store=MEMORY")
    trigger = conn.execute("SELECT sql FROM sqlite_master WHERE type='trigger' AND name=?", (ROOMNAMES_TRIGGER,))
    trigger_sql = trigger.fetchone()
    if trigger_sql:  # we write cache_roomnames ourselves; a per-row UPDATE would double the load time
        conn.execute(f"DROP TRIGGER {ROOMNAMES_TRIGGER}")
    builder = Builder(conn, version, random.Random(seed))
    conn.execute("BEGIN")
    builder.make_chats(chats)
    builder.load(messages)
    if trigger_sql:
        conn.execute(trigger_sql[0])
    conn.execute("COMMIT")
    t_load = time.perf_counter() - t0
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise sqlite3.OperationalError(f"could not switch {out} to WAL (got {mode!r})")
    conn.execute("PRAGMA synchronous=NORMAL")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("message", "chat", "attachment")}
    conn.close()
    elapsed = time.perf_counter() - t0
    return {"load_s": t_load, "elapsed_s": elapsed, **counts}


def main() -> int:
    """Parse arguments, build the database, print counts, rows/s and elapsed time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="path of the chat.db to create (must not exist)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--version", choices=VERSIONS, default="sequoia")
    args = parser.parse_args()
    if args.chats < 20 or args.messages < 1:
        parser.error("need --chats ≥ 20 and --messages ≥ 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stats = build(args.out, args.messages, args.chats, args.seed, args.version)
    size = args.out.stat().st_size / 2**20
    print(
        f"{args.out}: {stats['message']} messages, {stats['chat']} chats, {stats['attachment']} attachments, "
        f"{size:.0f} MiB ({args.version}, seed {args.seed})"
    )
    print(f"elapsed {stats['elapsed_s']:.1f} s, {stats['message'] / stats['load_s']:,.0f} message rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
