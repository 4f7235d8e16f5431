"""Many sessions, one Mac, end to end: two and three real `imessage-channel serve` processes over stdio on one
fixture chat.db and one state dir.

The first server started takes the reader lease and routes; the newest is the default session. Each test
ends its check with a sentinel through every session that is still live (`Crowd.settle`): events reach a
session in the order the reader routed them, so once every sentinel is in, nothing routed before is still
on its way, and "exactly once" can be counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator
from imessage_channel.lease import holder
from tests.harness import ServerProcess

OWNER = "owner@example.com"
FRIEND = "friend@example.com"


class Crowd:
    """A chat.db with the owner's self-chat and an allowed friend's DM, and servers named `names`, started in
    that order (the first reads, the last is the default)."""

    def __init__(self, tmp: Path, names: list[str], env: dict[str, str] | None = None) -> None:
        (tmp / "Messages").mkdir()
        self.db = create_chatdb(tmp / "Messages" / "chat.db", "sequoia")
        self.sim = MessagesSimulator(self.db, owner=OWNER)
        self.me = self.sim.self_chat()
        self.friend = self.sim.dm(FRIEND)
        self.home = tmp / "home"
        (self.home / "state").mkdir(parents=True)
        (self.home / "state" / "access.json").write_text(json.dumps({"allowFrom": [FRIEND]}))
        self.env = {"IMESSAGE_APPEND_SIGNATURE": "false", **(env or {})}
        self.servers: dict[str, ServerProcess] = {}
        self.dead: set[str] = set()
        self._sentinels = 0
        for name in names:
            self.add(name)

    def add(self, name: str) -> ServerProcess:
        server = ServerProcess(self.db, self.home, env={**self.env, "IMESSAGE_SESSION_NAME": name})
        server.start()
        server.initialize()
        server.wait_log("owner handles")  # chat.db open, the lease tried
        self.servers[name] = server
        return server

    def live(self) -> dict[str, ServerProcess]:
        return {n: s for n, s in self.servers.items() if n not in self.dead}

    def kill(self, name: str) -> None:
        server = self.servers[name]
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        self.dead.add(name)

    def settle(self) -> None:
        """A sentinel to each live session (`@name sentinel k`), and wait until each has it."""
        for name, server in self.live().items():
            self._sentinels += 1
            text = f"sentinel {self._sentinels}"
            self.sim.text_self(f"@{name} {text}", typed_on="mac")
            server.wait_event(lambda e, text=text: e["content"].endswith(text), timeout=30)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(session name, event) of every channel event any session wrote, sentinels left out."""
        return [
            (name, e)
            for name, server in self.servers.items()
            for e in server.events()
            if "sentinel" not in e["content"]
        ]

    def by_session(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.servers}
        for name, e in self.events():
            out[name].append(e["content"])
        return out

    def sent_texts(self) -> list[tuple[str, str]]:
        """(chat GUID, text) of every text the fake osascript sent, from every session."""
        return [(c["argv"][2], c["argv"][1]) for c in next(iter(self.servers.values())).osascript_calls()]

    def wait_sent(self, text: str) -> list[tuple[str, str]]:
        """Wait until some session sent a text starting with `text` (the sends run apart from delivery)."""
        server = next(iter(self.servers.values()))
        server.wait_for(lambda: any(t.startswith(text) for _, t in self.sent_texts()), f"a text {text!r} sent")
        return [(c, t) for c, t in self.sent_texts() if t.startswith(text)]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.sim.close()


@pytest.fixture
def pair(tmp_path: Path):
    crowd = Crowd(tmp_path, ["alpha", "beta"])
    yield crowd
    crowd.close()


def test_the_first_session_reads_and_every_unaddressed_text_reaches_exactly_one_session(pair: Crowd) -> None:
    assert holder(pair.home / "state") is not None
    for i in range(15):
        pair.sim.text_self(f"note {i}", typed_on="mac")
        pair.sim.receive(pair.friend, FRIEND, f"hello {i}")
    pair.settle()
    seen = Counter(e["content"] for _, e in pair.events())
    assert seen == Counter([f"note {i}" for i in range(15)] + [f"hello {i}" for i in range(15)])
    # unaddressed texts go to the newest session, and say so
    assert {name for name, _ in pair.events()} == {"beta"}
    assert {e["meta"].get("session") for _, e in pair.events()} == {"beta"}


def test_at_name_goes_to_that_session_without_the_prefix_and_the_chat_sticks(pair: Crowd) -> None:
    pair.sim.text_self("@Alpha: fix the build", typed_on="mac")
    pair.sim.text_self("and run the tests", typed_on="mac")  # sticks to alpha
    pair.sim.receive(pair.friend, FRIEND, "lunch?")  # another chat: the default
    pair.settle()
    assert pair.by_session() == {"alpha": ["fix the build", "and run the tests"], "beta": ["lunch?"]}
    alpha = [e for n, e in pair.events() if n == "alpha"]
    assert {e["meta"]["session"] for e in alpha} == {"alpha"}
    assert all(e["meta"]["self_chat"] == "true" for e in alpha)


def test_a_bare_at_name_moves_the_chat_and_is_answered_not_delivered(pair: Crowd) -> None:
    pair.sim.text_self("@alpha", typed_on="mac")
    pair.sim.text_self("now for alpha", typed_on="mac")
    pair.settle()
    assert pair.by_session() == {"alpha": ["now for alpha"], "beta": []}
    assert pair.wait_sent("This chat now goes") == [(pair.me.guid, 'This chat now goes to "alpha".')]


def test_an_unknown_name_is_delivered_to_the_default_with_a_note_and_the_owner_is_told(pair: Crowd) -> None:
    pair.sim.text_self("@gamma deploy it", typed_on="mac")
    pair.sim.text_self("@gamma and tag it", typed_on="mac")
    pair.settle()
    note = '[No session named "gamma" is running; this went to "beta".]'
    assert pair.by_session() == {"alpha": [], "beta": [f"{note}\n@gamma deploy it", f"{note}\n@gamma and tag it"]}
    told = pair.wait_sent('No session "gamma"')
    # told once, not once per text (`multisession.REPEAT_NOTICE_S`)
    assert told == [(pair.me.guid, 'No session "gamma" is running; your text went to "beta". Running: alpha, beta.')]


def test_slash_sessions_is_answered_by_the_channel_and_never_delivered(pair: Crowd) -> None:
    pair.sim.text_self("@alpha hi", typed_on="mac")
    pair.sim.text_self("/sessions", typed_on="mac")
    pair.settle()
    assert pair.by_session() == {"alpha": ["hi"], "beta": []}
    [(chat, answer)] = pair.wait_sent("Sessions")
    assert chat == pair.me.guid
    assert "• alpha (reads iMessage)" in answer and "• beta (default)" in answer
    assert f"{pair.me.guid} → alpha" in answer


def test_one_session_behaves_as_before(tmp_path: Path) -> None:
    crowd = Crowd(tmp_path, ["solo"])
    try:
        crowd.sim.text_self("@solo build it", typed_on="mac")
        crowd.sim.text_self("plain", typed_on="mac")
        crowd.sim.text_self("@someone else", typed_on="mac")
        crowd.settle()
        events = [e for _, e in crowd.events()]
        assert [e["content"] for e in events] == ["build it", "plain", "@someone else"]
        assert not any("session" in e["meta"] for e in events)
    finally:
        crowd.close()


def test_the_echo_of_a_reply_sent_by_a_session_that_does_not_read_is_not_delivered(pair: Crowd) -> None:
    beta = pair.servers["beta"]
    result = beta.call_tool("reply", {"chat_id": pair.me.guid, "text": "done: 3 files built"})
    assert result.get("isError") is not True, result
    pair.settle()
    assert not [e for _, e in pair.events() if "3 files built" in e["content"]]
    assert (pair.me.guid, "done: 3 files built") in pair.sent_texts()


def test_a_permission_verdict_reaches_the_session_that_asked(pair: Crowd) -> None:
    beta, alpha = pair.servers["beta"], pair.servers["alpha"]
    beta.notify(
        "notifications/claude/channel/permission_request",
        {"request_id": "abcde", "tool_name": "Bash", "description": "run the tests", "input_preview": "make"},
    )
    beta.wait_for(lambda: any("abcde" in t for _, t in pair.sent_texts()), "the relayed prompt")
    prompt = next(t for _, t in pair.sent_texts() if "abcde" in t)
    assert prompt.startswith("[beta] 🔐 Claude wants to use Bash")
    pair.sim.text_self("yes abcde", typed_on="mac")
    verdict = beta.wait_notification("notifications/claude/channel/permission")
    assert verdict == {"request_id": "abcde", "behavior": "allow"}
    pair.settle()
    assert alpha.notifications("notifications/claude/channel/permission") == []
    assert pair.wait_sent("✅ Allowed") == [(pair.me.guid, "✅ Allowed (abcde)")]
    assert not [e for _, e in pair.events() if "abcde" in e["content"]]


def test_when_the_reader_quits_another_session_takes_over_and_nothing_is_lost(pair: Crowd) -> None:
    pair.sim.text_self("before", typed_on="mac")
    pair.settle()
    alpha = pair.servers["alpha"]
    alpha.close_stdin()
    assert alpha.wait_exit() == 0
    pair.dead.add("alpha")
    pair.sim.text_self("after", typed_on="mac")
    pair.settle()
    assert pair.by_session() == {"alpha": [], "beta": ["before", "after"]}
    assert "takes over reading iMessage" in pair.servers["beta"].stderr()
    # one live session again: no more `session` meta
    assert "session" not in next(e for _, e in pair.events() if e["content"] == "after")["meta"]


BURST = re.compile(r"burst (\d+)$")


def test_the_reader_killed_mid_burst_every_text_is_delivered_exactly_once(tmp_path: Path) -> None:
    crowd = Crowd(tmp_path, ["alpha", "beta", "gamma"])
    try:
        names = ["alpha", "beta", "gamma"]
        total = 300
        with crowd.sim.batch():  # half the burst in one commit: the reader is busy routing it when killed
            for i in range(total // 2):
                crowd.sim.text_self(f"@{names[i % 3]} burst {i}", typed_on="mac")
        crowd.servers["alpha"].wait_for(
            lambda: sum(1 for _, e in crowd.events() if BURST.search(e["content"])) >= 20, "the burst flowing"
        )
        crowd.kill("alpha")  # the reader, mid-burst
        for i in range(total // 2, total):
            crowd.sim.text_self(f"@{names[i % 3]} burst {i}", typed_on="mac")
        crowd.settle()
        got = Counter(int(m.group(1)) for _, e in crowd.events() if (m := BURST.search(e["content"])))
        assert set(got) == set(range(total))
        repeated = [i for i, n in got.items() if n > 1]
        # the one window the ledger documents: a SIGKILL after the killed process wrote an event and before it
        # recorded it; the repeat is then the killed process's very last event
        alpha = crowd.servers["alpha"].events()
        last = BURST.search(alpha[-1]["content"]) if alpha else None
        assert repeated in ([], [int(last.group(1))] if last else [])
        survivors = crowd.servers["beta"].stderr() + crowd.servers["gamma"].stderr()
        assert survivors.count("takes over reading iMessage") == 1
    finally:
        crowd.close()


def test_an_event_that_cannot_be_handed_off_is_delivered_by_the_reader_not_lost(pair: Crowd) -> None:
    # A message GUID Messages accepts (plain, 250 characters) but too long for a handoff event id.
    with pair.sim.batch():
        row = pair.sim.send(pair.me, "odd id")
        pair.sim.conn.execute("UPDATE message SET guid = ? WHERE ROWID = ?", ("A" * 250, row.rowid))
    pair.settle()
    assert pair.by_session() == {"alpha": ["odd id"], "beta": []}
    assert "routing failed for" in pair.servers["alpha"].stderr()
