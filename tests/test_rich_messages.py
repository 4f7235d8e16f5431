"""Rich messages as Claude sees them: every attachment readable, reactions, replies, edits and unsends,
owner controls, and history.

End to end: the real `imessage-channel serve` over stdio, a fixture chat.db the Messages simulator writes
to, the fake `osascript` and the fake `sips` (tests/fakes/bin). The last section drives the pipeline
directly where a clock must move (download and edit windows)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.access import Access, AccessStore
from imessage_channel.chatdb import ChatDB
from imessage_channel.clock import ManualClock
from imessage_channel.devtools.simulator import AttachmentSpec, MessagesSimulator
from imessage_channel.echo import EchoFilter
from imessage_channel.inbound import Cursor, Deliver, InboundPipeline
from imessage_channel.inbound.followups import ATTACHMENT_WAIT_S, EDIT_WINDOW, MAX_WAITING, TRACK_LIMIT
from imessage_channel.media import image_dimensions
from imessage_channel.replies import reply_signature
from tests.harness import FAKES_BIN, PERMISSION, ServerProcess, sentinel
from tests.test_media import heic_bytes

OWNER = "owner@example.com"
FRIEND = "friend@example.com"
STRANGER = "stranger@example.com"
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 60
CAF = b"caff\x00\x01\x00\x00" + b"\0" * 64


class World:
    """Self-chat, an allowlisted friend's DM and a stranger's DM in a Sequoia chat.db, and a server on it."""

    def __init__(self, tmp: Path, *, access: dict | None = None, env: dict[str, str] | None = None) -> None:
        (tmp / "Messages").mkdir()
        self.db = create_chatdb(tmp / "Messages" / "chat.db", "sequoia")
        self.sim = MessagesSimulator(self.db, owner=OWNER, owner_phone="+15555550100")
        self.me = self.sim.self_chat()
        self.sim.send(self.me, "earlier note to self")
        self.friend = self.sim.dm(FRIEND)
        self.stranger = self.sim.dm(STRANGER)
        self.sips_log = tmp / "sips.jsonl"
        self.server = ServerProcess(self.db, tmp / "home", env={"FAKE_SIPS_LOG": str(self.sips_log), **(env or {})})
        self.server.state.mkdir(parents=True)
        (self.server.state / "access.json").write_text(json.dumps(access or {"allowFrom": [FRIEND]}))
        self.server.start()
        self.init = self.server.initialize()
        self._sentinels = 0

    def sentinel(self) -> dict:
        self._sentinels += 1
        return sentinel(self.server, self.sim, self._sentinels)

    def kinds(self) -> list[str | None]:
        return [e["meta"].get("kind") for e in self.server.events()]

    def sips_calls(self) -> list[list[str]]:
        if not self.sips_log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.sips_log.read_text().splitlines()]

    def close(self) -> None:
        self.server.stop()
        self.sim.close()


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.close()


def claude_replied(world: World, chat_guid: str, text: str) -> str:
    """Claude replies through the tool; Messages writes the sent row back (the channel drops it as an
    echo). Returns that row's GUID, which the phone then reacts or replies to."""
    assert world.server.call_tool("reply", {"chat_id": chat_guid, "text": text}).get("isError") is not True
    chat = world.me if chat_guid == world.me.guid else world.friend
    return world.sim.send(chat, f"{text}\nSent by Claude").guid


# -- reactions ------------------------------------------------------------------------------------------------


def test_a_reaction_to_claudes_reply_reads_as_one_and_so_does_taking_it_back(world: World) -> None:
    target = claude_replied(world, world.friend.guid, "Done: 3 files changed, tests pass.")
    world.sim.tapback(world.friend, FRIEND, target, "like")
    world.sim.tapback(world.friend, FRIEND, target, "like", removed=True)
    added, removed = world.server.wait_events(2)
    assert added["content"] == '👍 liked your message "Done: 3 files changed, tests pass.…"'
    assert added["meta"] == {
        "chat_id": world.friend.guid,
        "message_id": added["meta"]["message_id"],
        "user": FRIEND,
        "ts": added["meta"]["ts"],
        "kind": "reaction",
        "reaction": "like",
        "reaction_to": target,
    }
    assert removed["content"] == 'removed 👍 from your message "Done: 3 files changed, tests pass.…"'
    assert removed["meta"]["reaction_removed"] == "true" and removed["meta"]["reaction_to"] == target


def test_the_owner_reacting_in_self_chat_and_a_custom_emoji_reaction(world: World) -> None:
    target = claude_replied(world, world.me.guid, "Deployed to staging")
    world.sim.tapback(world.me, None, target, "love")  # the owner's own tapback (is_from_me)
    friend_text = world.sim.receive(world.friend, FRIEND, "dinner at 8?")
    world.sim.tapback(world.friend, FRIEND, friend_text.guid, "emoji", emoji="🎉")
    love = world.server.wait_event(lambda e: e["meta"].get("reaction") == "love")
    assert love["content"] == '❤️ loved your message "Deployed to staging…"'
    assert love["meta"]["self_chat"] == "true" and love["meta"]["user"] == OWNER
    party = world.server.wait_event(lambda e: e["meta"].get("reaction") == "emoji")
    assert party["content"] == 'reacted 🎉 to their own message "dinner at 8?"'


def test_reactions_from_people_not_allowed_are_not_delivered(world: World) -> None:
    hello = world.sim.receive(world.stranger, STRANGER, "hello")
    world.sim.tapback(world.stranger, STRANGER, hello.guid, "laugh")
    world.sentinel()
    assert world.kinds() == [None]


# -- replies --------------------------------------------------------------------------------------------------


def test_a_reply_quotes_what_it_answers_in_the_body_never_in_meta(world: World) -> None:
    question = world.sim.receive(world.friend, FRIEND, 'Which one?\n"A" or "B"')
    world.sim.receive(world.friend, FRIEND, "the first", reply_to=question.guid)
    world.sim.receive(world.friend, FRIEND, "and this", reply_to="GONE-GUID")
    first = world.server.wait_event(lambda e: e["content"].endswith("the first"))
    assert first["content"] == '↩ reply to their own message "Which one?…"\nthe first'
    assert first["meta"]["reply_to"] == question.guid
    assert all("Which" not in v for v in first["meta"].values())
    gone = world.server.wait_event(lambda e: e["content"].endswith("and this"))
    assert gone["content"] == "↩ reply to a message\nand this"


# -- edits and unsends -----------------------------------------------------------------------------------------


def test_an_edit_of_a_delivered_message_arrives_as_an_edit_event(world: World) -> None:
    row = world.sim.receive(world.friend, FRIEND, "Book the 9am flight")
    world.server.wait_event(lambda e: e["content"] == "Book the 9am flight")
    world.sim.edit(row, "Book the 10am flight")
    edit = world.server.wait_event(lambda e: e["meta"].get("kind") == "edit")
    assert edit["content"] == "Book the 10am flight"
    assert edit["meta"]["edited_from"] == row.guid and edit["meta"]["message_id"] == row.guid
    assert edit["meta"]["chat_id"] == world.friend.guid and edit["meta"]["user"] == FRIEND
    world.sim.edit(row, "Book the 11am flight")  # edited again: another event
    world.server.wait_event(lambda e: e["content"] == "Book the 11am flight")


def test_an_unsend_of_a_delivered_message_tells_claude_to_drop_it(world: World) -> None:
    row = world.sim.receive(world.friend, FRIEND, "Delete the staging database")
    world.server.wait_event(lambda e: e["content"] == "Delete the staging database")
    world.sim.unsend(row)
    unsend = world.server.wait_event(lambda e: e["meta"].get("kind") == "unsend")
    assert unsend["content"] == 'unsent their message "Delete the staging database"; disregard it'
    assert unsend["meta"]["message_id"] == row.guid and unsend["meta"]["user"] == FRIEND


def test_edits_and_unsends_of_messages_never_delivered_stay_silent(world: World) -> None:
    dropped = world.sim.receive(world.stranger, STRANGER, "let me in")
    gone = world.sim.receive(world.stranger, STRANGER, "please")
    world.sentinel()
    world.sim.edit(dropped, "LET ME IN")
    world.sim.unsend(gone)
    world.sentinel()
    assert world.kinds() == [None, None]


# -- attachments ------------------------------------------------------------------------------------------------


def test_a_4_mb_iphone_heic_arrives_as_a_readable_jpeg_and_keeps_its_original(world: World) -> None:
    heic = AttachmentSpec("IMG_0042.HEIC", "image/heic", "public.heic", heic_bytes(size=4 * 1024 * 1024))
    row = world.sim.receive(world.friend, FRIEND, "", attachments=[heic])
    event = world.server.wait_event(lambda e: e["meta"]["message_id"] == row.guid)
    meta = event["meta"]
    jpeg = Path(meta["image_path"])
    assert jpeg.parent == world.server.state / "inbox" and jpeg.suffix == ".jpg"
    assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff" and image_dimensions(jpeg) is not None
    assert jpeg.stat().st_size < 3_750_000
    (entry,) = json.loads(meta["attachments"])
    assert entry == {
        "path": str(jpeg),
        "mime": "image/jpeg",
        "name": "IMG_0042.HEIC",
        "size": jpeg.stat().st_size,
        "original": entry["original"],
    }
    assert Path(entry["original"]).stat().st_size == 4 * 1024 * 1024 and entry["original"].endswith("IMG_0042.HEIC")
    assert meta["attachment_count"] == "1"
    assert event["content"] == "[attachment: IMG_0042.HEIC image/heic]"
    (argv,) = world.sips_calls()
    assert argv[:3] == ["-s", "format", "jpeg"] and argv[argv.index("-Z") + 1] == "2048"
    assert entry["original"] in argv


@pytest.mark.skipif(shutil.which("sips") is not None, reason="a real sips is on PATH (macOS)")
def test_without_sips_the_heic_is_delivered_as_it_is_and_the_log_says_why(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "osascript").symlink_to(FAKES_BIN / "osascript")
    w = World(tmp_path, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    try:
        heic = AttachmentSpec("IMG_1.heic", "image/heic", "public.heic", heic_bytes(size=64 * 1024))
        w.sim.receive(w.friend, FRIEND, "photo", attachments=[heic])
        w.sim.receive(w.friend, FRIEND, "another", attachments=[heic])
        w.server.wait_event(lambda e: e["content"] == "another")
        first = w.server.events()[0]["meta"]
        assert first["image_path"].endswith("IMG_1.heic") and Path(first["image_path"]).exists()
        assert w.server.stderr().count("sips not found") == 1
    finally:
        w.close()


def test_a_download_in_progress_does_not_hold_back_later_texts_and_follows_when_finished(world: World) -> None:
    done = AttachmentSpec("IMG_1.jpg", "image/jpeg", "public.jpeg", JPEG)
    downloading = AttachmentSpec("IMG_2.jpg", "image/jpeg", "public.jpeg", None, transfer_state=3)
    row = world.sim.receive(world.friend, FRIEND, "two photos", attachments=[done, downloading])
    world.sim.receive(world.friend, FRIEND, "did they arrive?")
    first = world.server.wait_event(lambda e: e["content"] == "two photos")
    world.server.wait_event(lambda e: e["content"] == "did they arrive?")
    assert first["meta"]["attachment_count"] == "2" and first["meta"]["attachments_pending"] == "1"
    assert [Path(f["path"]).name for f in json.loads(first["meta"]["attachments"])] == ["IMG_1.jpg"]
    world.sim.finish_download(row, JPEG, index=1)
    follow = world.server.wait_event(lambda e: e["meta"].get("kind") == "attachment")
    assert follow["meta"]["message_id"] == row.guid and follow["meta"]["chat_id"] == world.friend.guid
    assert Path(follow["meta"]["image_path"]).name == "IMG_2.jpg" and Path(follow["meta"]["image_path"]).exists()
    assert "attachments_pending" not in follow["meta"] and follow["meta"]["attachment_count"] == "1"
    assert follow["content"] == "finished downloading for an earlier message: [attachment: IMG_2.jpg image/jpeg]"


def test_a_message_whose_only_file_is_downloading_says_so(world: World) -> None:
    spec = AttachmentSpec("clip.mov", "video/quicktime", "com.apple.quicktime-movie", None, transfer_state=1)
    world.sim.receive(world.friend, FRIEND, "", attachments=[spec])
    event = world.server.wait_event(lambda e: e["meta"].get("attachments_pending") == "1")
    assert event["content"] == "[attachment: clip.mov video/quicktime, still downloading]"
    assert "attachments" not in event["meta"] and "image_path" not in event["meta"]


def test_a_voice_message_is_labelled_audio(world: World) -> None:
    caf = AttachmentSpec("Audio Message.caf", "audio/x-caf", "com.apple.coreaudio-format", CAF)
    world.sim.receive(world.friend, FRIEND, "", attachments=[caf], audio_message=True)
    event = world.server.wait_event(lambda e: e["meta"].get("audio_message") == "true")
    assert event["content"] == "[audio message: Audio Message.caf audio/x-caf]"
    (entry,) = json.loads(event["meta"]["attachments"])
    assert entry["mime"] == "audio/x-caf" and Path(entry["path"]).read_bytes() == CAF
    assert "image_path" not in event["meta"]


def test_a_sticker_is_labelled_and_its_heic_converted(world: World) -> None:
    sticker = AttachmentSpec("sticker.heic", "image/heic", "public.heic", heic_bytes(300, 300, 8192), is_sticker=True)
    world.sim.receive(world.friend, FRIEND, "", attachments=[sticker])
    event = world.server.wait_event(lambda e: e["meta"].get("sticker") == "true")
    assert event["content"] == "[sticker: sticker.heic]"
    assert event["meta"]["image_path"].endswith(".jpg")


# -- owner controls ---------------------------------------------------------------------------------------------


def test_the_instructions_explain_every_new_attribute(world: World) -> None:
    text = world.init["instructions"]
    for word in (
        "attachments",
        "attachments_pending",
        "audio_message",
        "sticker",
        "reply_to",
        "reaction_to",
        "reaction_removed",
        "edited_from",
        "unsend",
        '`kind="attachment"`',
        "original",
        "catch_up",
        "late",
    ):
        assert word in text, word
    assert world.init["capabilities"]["experimental"] == {"claude/channel": {}, "claude/channel/permission": {}}


def test_relay_off_declares_no_permission_capability_and_relays_nothing(tmp_path: Path) -> None:
    w = World(tmp_path, env={"IMESSAGE_RELAY_PERMISSIONS": "off"})
    try:
        assert w.init["capabilities"]["experimental"] == {"claude/channel": {}}
        w.server.notify("notifications/claude/channel/permission_request", {"request_id": "abcde", "tool_name": "Bash"})
        w.server.request("tools/list")  # handled after the notification: the request has been seen
        w.sim.text_self("yes abcde", typed_on="mac")
        w.server.wait_event(lambda e: e["content"] == "yes abcde")  # an ordinary message, not a verdict
        assert w.server.osascript_calls() == [] and w.server.notifications(PERMISSION) == []
    finally:
        w.close()


def test_the_signature_comes_from_access_json(tmp_path: Path) -> None:
    w = World(tmp_path, access={"appendSignature": True, "signature": "— Claude, on my Mac"})
    try:
        w.server.call_tool("reply", {"chat_id": w.me.guid, "text": "On it."})
        (w.server.state / "access.json").write_text(json.dumps({"appendSignature": False}))
        w.server.call_tool("reply", {"chat_id": w.me.guid, "text": "Done."})
        assert [c["argv"][1] for c in w.server.wait_osascript(2)] == ["On it.\n— Claude, on my Mac", "Done."]
    finally:
        w.close()


@pytest.mark.parametrize(
    ("append_signature", "signature", "env", "expected"),
    [
        (None, None, None, "\nSent by Claude"),
        (False, None, None, None),
        (True, "-- C", None, "\n-- C"),
        (None, "  ", None, None),
        (False, "-- C", True, "\n-- C"),  # the env var wins when set (official plugin compatibility)
        (True, None, False, None),
    ],
)
def test_reply_signature(append_signature: bool | None, signature: str | None, env: bool | None, expected: str | None):
    assert reply_signature(Access(append_signature=append_signature, signature=signature), env) == expected


# -- history ------------------------------------------------------------------------------------------------------


def test_chat_messages_shows_rich_rows_compactly_and_never_more_than_the_limit(world: World) -> None:
    heic = AttachmentSpec("IMG_1.heic", "image/heic", "public.heic", heic_bytes(size=4096))
    photo = world.sim.receive(world.friend, FRIEND, "look", attachments=[heic])
    world.sim.tapback(world.friend, None, photo.guid, "love")  # the owner loves it from the phone
    world.sim.receive(world.friend, FRIEND, "so?", reply_to=photo.guid)
    typo = world.sim.receive(world.friend, FRIEND, "see you at 7")
    world.sim.edit(typo, "see you at 8")  # history reads chat.db as it is now
    text = world.server.call_tool("chat_messages", {"chat_guid": world.friend.guid, "limit": 4})["content"][0]["text"]
    lines = [ln for ln in text.splitlines() if ln.startswith("[")]
    assert [ln.split(": ", 1)[1] for ln in lines] == [
        "[attachment: IMG_1.heic image/heic] look",
        '❤️ loved "look"',
        '↩ reply to "look": so?',
        "see you at 8 (edited)",
    ]
    short = world.server.call_tool("chat_messages", {"chat_guid": world.friend.guid, "limit": 2})["content"][0]
    assert len([ln for ln in short["text"].splitlines() if ln.startswith("[")]) == 2


# -- pipeline details (a clock that moves) ---------------------------------------------------------------------


class Pipe:
    def __init__(self, tmp: Path) -> None:
        self.db_path = create_chatdb(tmp / "chat.db", "sequoia")
        self.clock = ManualClock()
        self.sim = MessagesSimulator(self.db_path, owner=OWNER, clock=self.clock.now)
        self.sim.send(self.sim.self_chat(), "first")
        self.friend = self.sim.dm(FRIEND)
        (tmp / "state").mkdir()
        (tmp / "state" / "access.json").write_text(json.dumps({"allowFrom": [FRIEND]}))
        self.db = ChatDB(self.db_path)
        self.pipe = InboundPipeline(
            db=self.db,
            store=AccessStore(tmp / "state"),
            owner=self.db.owner_handles(),
            cursor=Cursor(self.db.max_rowid()),
            echo=EchoFilter(clock=self.clock.monotonic),
            clock=self.clock,
        )

    def poll(self) -> list[Deliver]:
        return [a for a in self.pipe.poll()[0] if isinstance(a, Deliver)]


@pytest.fixture
def pipe(tmp_path: Path):
    p = Pipe(tmp_path)
    yield p
    p.sim.close()
    p.db.close()


def test_downloads_are_given_up_after_the_wait(pipe: Pipe) -> None:
    spec = AttachmentSpec("IMG_2.jpg", "image/jpeg", "public.jpeg", None, transfer_state=3)
    early = pipe.sim.receive(pipe.friend, FRIEND, "early", attachments=[spec])
    assert pipe.poll()[0].meta["attachments_pending"] == "1"
    pipe.clock.advance(ATTACHMENT_WAIT_S / 2)
    late = pipe.sim.receive(pipe.friend, FRIEND, "late", attachments=[spec])
    assert [d.content for d in pipe.poll()] == ["late"]
    pipe.clock.advance(ATTACHMENT_WAIT_S / 2 + 1)  # past the wait for "early", within it for "late"
    pipe.sim.finish_download(early, JPEG)
    pipe.sim.finish_download(late, JPEG)
    assert [d.meta["message_id"] for d in pipe.poll()] == [late.guid]


def test_at_most_max_waiting_downloads_are_watched(pipe: Pipe) -> None:
    spec = AttachmentSpec("f.bin", "application/octet-stream", "public.data", None, transfer_state=1)
    with pipe.sim.batch():
        for i in range(MAX_WAITING + 5):
            pipe.sim.receive(pipe.friend, FRIEND, f"file {i}", attachments=[spec])
    assert len(pipe.poll()) == MAX_WAITING + 5
    assert pipe.pipe.followups.watched[0] == MAX_WAITING


def test_edits_after_the_edit_window_are_not_watched(pipe: Pipe) -> None:
    old = pipe.sim.receive(pipe.friend, FRIEND, "old draft", date=pipe.clock.now() - timedelta(minutes=10))
    new = pipe.sim.receive(pipe.friend, FRIEND, "new draft", date=pipe.clock.now())
    assert [d.content for d in pipe.poll()] == ["old draft", "new draft"]
    pipe.clock.advance(EDIT_WINDOW - timedelta(minutes=10) + timedelta(seconds=1))  # past the window of "old" only
    pipe.sim.edit(old, "old final")
    pipe.sim.edit(new, "new final")
    assert [(d.meta["kind"], d.content) for d in pipe.poll()] == [("edit", "new final")]


def test_only_the_newest_delivered_messages_are_watched_for_edits(pipe: Pipe) -> None:
    with pipe.sim.batch():
        rows = [pipe.sim.receive(pipe.friend, FRIEND, f"m{i}", date=pipe.clock.now()) for i in range(TRACK_LIMIT + 1)]
    assert len(pipe.poll()) == TRACK_LIMIT + 1
    pipe.sim.edit(rows[0], "oldest, edited")
    pipe.sim.edit(rows[-1], "newest, edited")
    assert [(d.meta["kind"], d.content) for d in pipe.poll()] == [("edit", "newest, edited")]
