"""Many sessions, one Mac: routing rules (pure tables), session names, the registry and the reader lease.

Routing tables read like the spec: each row is (what was typed, where, the state) → (decision, target,
delivered text, meta). Registry and lease tests use real separate processes (`tests/session_node.py`,
driven by `tests/nodes.py`) and wait for what the processes print, never for a fixed time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imessage_channel import lease as lease_mod
from imessage_channel.lease import ReaderLease
from imessage_channel.routing import (
    Address,
    Decision,
    chat_key,
    decide,
    parse_address,
    permission_prompt_prefix,
    pins_from_access,
    redirect,
    sessions_text,
)
from imessage_channel.sessions import (
    MAX_NAME,
    Registry,
    SessionInfo,
    StickyStore,
    base_name,
    new_session_id,
    sanitize_name,
    unique_name,
)
from tests.nodes import Cluster, Rows

WORK = SessionInfo("aaaa0001", "work", 1)
FAMILY = SessionInfo("bbbb0002", "family", 2)  # started last: the default
LIVE = [WORK, FAMILY]
CHAT = "iMessage;-;+15551234567"
OTHER = "iMessage;-;friend@example.com"
SELF = "iMessage;-;me@example.com"


# -- routing: the spec as tables -------------------------------------------------------------------
D = Decision


def stuck(session: SessionInfo, chat: str = CHAT) -> dict:
    return {"sticky": {chat: session.id}}


def pinned(name: str, chat: str = CHAT) -> dict:
    return {"pins": {chat: name}}


def follows(session: SessionInfo) -> dict:
    return {"follows": session.id}


GONE = SessionInfo("dead0000", "gone", 0)  # a session that has ended (not in LIVE)
ANY_CHAT = "any;-;+15551234567"  # CHAT as macOS 26 names it


# fmt: off
ROUTES = [
    # case                     typed text          decision     to      delivered text    state
    ("addressed",              "@work fix it",     D.ADDRESSED, WORK,   "fix it",         {}),
    ("addressed, any case",    "@WoRk: fix it",    D.ADDRESSED, WORK,   "fix it",         {}),
    ("addressed, comma",       "@family, dinner?", D.ADDRESSED, FAMILY, "dinner?",        {}),
    ("addressed, newline",     "@work\nline two",  D.ADDRESSED, WORK,   "line two",       {}),
    ("default is the newest",  "hello",            D.DEFAULT,   FAMILY, "hello",          {}),
    ("sticky",                 "and the tests",    D.STICKY,    WORK,   "and the tests",  stuck(WORK)),
    ("sticky is per chat",     "hi",               D.DEFAULT,   FAMILY, "hi",             stuck(WORK, OTHER)),
    ("sticky to an ended",     "hi",               D.DEFAULT,   FAMILY, "hi",             stuck(GONE)),
    ("pin, any GUID prefix",   "hi",               D.PINNED,    WORK,   "hi",             pinned("work", ANY_CHAT)),
    ("pinned beats sticky",    "hi",               D.PINNED,    WORK,   "hi",             pinned("Work") | stuck(FAMILY)),  # noqa: E501
    ("address beats pin",      "@family hi",       D.ADDRESSED, FAMILY, "hi",             pinned("work")),
    ("follow-up beats sticky", "edited text",      D.FOLLOW_UP, WORK,   "edited text",    follows(WORK) | stuck(FAMILY)),  # noqa: E501
    ("follow-up of an ended",  "x",                D.DEFAULT,   FAMILY, "x",              follows(GONE)),
    ("no address: possessive", "@work's laptop",   D.DEFAULT,   FAMILY, "@work's laptop", {}),
    ("no address: mid-text",   "ask @work",        D.DEFAULT,   FAMILY, "ask @work",      {}),
    ("bare @name with files",  "@work",            D.ADDRESSED, WORK,   "",               {"attachments": True}),
    ("/sessions elsewhere",    "/sessions",        D.DEFAULT,   FAMILY, "/sessions",      {}),
]
# fmt: on


@pytest.mark.parametrize(("case", "text", "decision", "target", "body", "state"), ROUTES, ids=[r[0] for r in ROUTES])
def test_route(case, text, decision, target, body, state):
    route = decide(text, CHAT, LIVE, **{"sticky": {}, **state})
    assert (route.decision, route.target, route.text) == (decision, target, body)
    assert route.meta == {"session": target.name}  # two sessions live: every event says which one it reached
    assert route.reply is None
    assert route.decision.description


def test_addressed_chat_sticks_until_another_address_or_the_end_of_the_session():
    route = decide("@work fix it", CHAT, LIVE, sticky={})
    assert route.sticky == {CHAT: WORK.id}
    follow = decide("and the tests", CHAT, LIVE, sticky=route.sticky)
    assert (follow.decision, follow.target) == (Decision.STICKY, WORK)
    moved = decide("@family dinner", CHAT, LIVE, sticky=follow.sticky)
    assert moved.sticky == {CHAT: FAMILY.id}
    # work ends: its chats come unstuck and the entry is dropped from the map
    ended = decide("still there?", OTHER, [FAMILY], sticky={OTHER: WORK.id})
    assert (ended.decision, ended.target, ended.sticky) == (Decision.DEFAULT, FAMILY, {})


def test_default_routing_does_not_stick_unless_asked():
    assert decide("hi", CHAT, LIVE, sticky={}).sticky == {}
    assert decide("hi", CHAT, LIVE, sticky={}, stick_default=True).sticky == {CHAT: FAMILY.id}


def test_unknown_name_is_delivered_to_the_default_with_a_note_and_answered_in_self_chat():
    route = decide("@nobody are you there", SELF, LIVE, sticky={}, self_chat=True)
    assert (route.decision, route.target) == (Decision.UNKNOWN_NAME, FAMILY)
    assert route.text == '[No session named "nobody" is running; this went to "family".]\n@nobody are you there'
    assert route.note is not None and route.note in route.text
    assert route.reply == 'No session "nobody" is running; your text went to "family". Running: work, family.'
    assert route.sticky == {}


def test_unknown_name_outside_self_chat_gets_a_note_but_no_reply():
    route = decide("@nobody hi", OTHER, LIVE, sticky={OTHER: WORK.id})
    assert (route.decision, route.target, route.reply) == (Decision.UNKNOWN_NAME, WORK, None)
    assert route.text.endswith("\n@nobody hi")


def test_pinned_to_a_session_that_is_not_running():
    route = decide("hi", CHAT, LIVE, sticky={}, pins={CHAT: "ghost"})
    assert (route.decision, route.target) == (Decision.PIN_ABSENT, FAMILY)
    assert route.text == '[This chat is pinned to the session "ghost", which is not running; it went to "family".]\nhi'


def test_bare_address_switches_the_chat_without_delivering():
    route = decide("@work", SELF, LIVE, sticky={}, self_chat=True)
    assert (route.decision, route.target, route.text) == (Decision.SWITCHED, None, "")
    assert not route.decision.delivers
    assert route.sticky == {SELF: WORK.id}
    assert route.reply == 'This chat now goes to "work".'
    quiet = decide("@work.", OTHER, LIVE, sticky={})
    assert (quiet.decision, quiet.reply, quiet.sticky) == (Decision.SWITCHED, None, {OTHER: WORK.id})


@pytest.mark.parametrize(
    ("text", "decision", "body"),
    [
        ("@work fix it", Decision.ADDRESSED, "fix it"),  # own name: simply stripped
        ("@WORK fix it", Decision.ADDRESSED, "fix it"),
        ("hello", Decision.DEFAULT, "hello"),
        ("@nobody hi", Decision.DEFAULT, "@nobody hi"),  # no note, no reply: exactly as before sessions
    ],
)
def test_one_session_behaves_as_before(text, decision, body):
    route = decide(text, SELF, [WORK], sticky={}, self_chat=True)
    assert (route.decision, route.target, route.text, route.meta, route.reply) == (decision, WORK, body, {}, None)


def test_sessions_command_in_self_chat_is_answered_not_delivered():
    route = decide("  /Sessions ", SELF, [FAMILY, WORK], sticky={CHAT: WORK.id}, self_chat=True, reader=WORK.id)
    assert (route.decision, route.target, route.text) == (Decision.SESSIONS, None, "")
    assert route.reply == (
        "Sessions (2):\n"
        "• work (reads iMessage)\n"
        "• family (default)\n"
        "Chats:\n"
        f"• {CHAT} → work\n"
        "Start a text with @name to send it to that session; the chat then stays with it."
    )


def test_sessions_text_shows_pins_labels_and_a_lone_session():
    text = sessions_text(
        LIVE, sticky={SELF: FAMILY.id, CHAT: WORK.id}, pins={CHAT: "work", OTHER: "ghost"}, labels={SELF: "self-chat"}
    )
    assert f"• {CHAT} → work (pinned)" in text
    assert f"• {OTHER} → ghost (pinned, not running)" in text
    assert "• self-chat → family" in text
    assert text.count(CHAT) == 1  # a pinned chat is listed once, as pinned
    assert sessions_text([WORK], sticky={}).startswith("One session:\n• work (default)\n")


def test_redirect_sends_orphans_where_an_unaddressed_text_would_go():
    route = redirect(CHAT, [WORK], sticky={CHAT: FAMILY.id})
    assert (route.decision, route.target, route.meta, route.sticky) == (Decision.DEFAULT, WORK, {}, {})
    route = redirect(CHAT, LIVE, sticky={CHAT: WORK.id})
    assert (route.decision, route.target, route.meta) == (Decision.STICKY, WORK, {"session": "work"})


def test_routing_needs_a_live_session():
    with pytest.raises(ValueError):
        decide("hi", CHAT, [], sticky={})


@pytest.mark.parametrize(
    ("text", "name", "rest"),
    [
        ("@work fix", "work", "fix"),
        ("  @work:  fix", "work", "fix"),
        ("@work.", "work", ""),
        ("@proj-2 go", "proj-2", "go"),
        ("@über hallo", "über", "hallo"),
        ("@work?", "work", ""),
    ],
)
def test_parse_address(text, name, rest):
    assert parse_address(text) == Address(name, rest)


@pytest.mark.parametrize("text", ["work", "@", "@ work", "@work's", "mail @work", "@work/x"])
def test_not_an_address(text):
    assert parse_address(text) is None


def test_decisions_describe_themselves():
    assert len({d.value for d in Decision}) == len(Decision)
    assert all(d.description and d.description != d.value for d in Decision)
    assert Decision("sticky") is Decision.STICKY
    assert [d for d in Decision if not d.delivers] == [Decision.SESSIONS, Decision.SWITCHED]


def test_pins_and_prompt_prefix_helpers():
    assert pins_from_access({"routes": {CHAT: " family ", OTHER: 3, "x": ""}}) == {CHAT: "family"}
    assert pins_from_access({"routes": ["nope"]}) == {}
    assert pins_from_access({}) == {}
    assert chat_key("any;-;Me@Example.com") == chat_key("iMessage;-;me@example.com") == "me@example.com"
    assert permission_prompt_prefix("work", 2) == "[work] "
    assert permission_prompt_prefix("work", 1) == ""


# -- names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("proj", "proj"),
        ("My Project", "my-project"),
        ("  --Weird__Name!!  ", "weird__name"),
        ("Café", "café"),
        ("日本", "日本"),
        ("...", "session"),
        ("a" * 50, "a" * MAX_NAME),
    ],
)
def test_sanitize_name(raw, name):
    assert sanitize_name(raw) == name


def test_base_name_prefers_the_env_name_then_the_project_dir_then_the_working_dir():
    cwd = Path("/Users/me/code/Site")
    assert base_name({"IMESSAGE_SESSION_NAME": "Family", "CLAUDE_PROJECT_DIR": "/x/proj"}, cwd) == "family"
    assert base_name({"CLAUDE_PROJECT_DIR": "/x/My Proj/"}, cwd) == "my-proj"
    assert base_name({"IMESSAGE_SESSION_NAME": "  "}, cwd) == "site"
    assert base_name({}, Path("/")) == "session"


def test_unique_name():
    assert unique_name("proj", []) == "proj"
    assert unique_name("proj", ["PROJ"]) == "proj-2"
    assert unique_name("proj", ["proj", "proj-2", "proj-4"]) == "proj-3"
    long = "x" * MAX_NAME
    assert unique_name(long, [long]) == "x" * (MAX_NAME - 2) + "-2"


# -- registry: in one process ------------------------------------------------------------------------
def test_registry_in_process(tmp_path):
    registry = Registry(tmp_path)
    first = registry.register(new_session_id(), "proj")
    second = registry.register(new_session_id(), "proj")
    assert [s.name for s in registry.live()] == ["proj", "proj-2"]
    assert first.info.seq < second.info.seq
    assert registry.get(second.info.id) == second.info
    assert (tmp_path / "sessions").stat().st_mode & 0o777 == 0o700
    first.close()
    assert [s.name for s in registry.live()] == ["proj-2"]
    assert not (tmp_path / "sessions" / f"{first.info.id}.json").exists()
    third = registry.register(new_session_id(), "proj")
    assert third.info.name == "proj"  # a name is free again once its session ended
    assert third.info.seq > second.info.seq
    with pytest.raises(ValueError):
        registry.register(third.info.id, "again")
    with pytest.raises(ValueError):
        registry.register("../evil", "x")


def test_registry_skips_malformed_entries(tmp_path):
    registry = Registry(tmp_path)
    me = registry.register(new_session_id(), "proj")
    (tmp_path / "sessions" / "0badf00d.json").write_text("{not json")
    (tmp_path / "sessions" / "notes.json").write_text("{}")
    assert [s.id for s in registry.live()] == [me.info.id]


def test_sticky_store_round_trip_and_corrupt_file(tmp_path):
    store = StickyStore(tmp_path)
    assert store.load() == {}
    store.save({CHAT: WORK.id})
    assert StickyStore(tmp_path).load() == {CHAT: WORK.id}
    store.path.write_text('{"version": 1, "sticky": {"x": "not an id"}}')
    assert StickyStore(tmp_path).load() == {}
    assert list(store.path.parent.glob("routes.json.corrupt-*"))


# -- registry: real processes --------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path):
    rows = Rows(tmp_path / "rows.db")
    c = Cluster(tmp_path / "state", rows.path, tmp_path / "logs")
    c.table = rows  # type: ignore[attr-defined]
    yield c
    c.stop_all()
    rows.close()


def test_two_and_three_processes_register_with_unique_names(cluster, tmp_path):
    env = {"CLAUDE_PROJECT_DIR": str(tmp_path / "proj")}
    first = cluster.start(env=env, lease=False)
    second = cluster.start(env=env, lease=False)
    assert (first.name, second.name) == ("proj", "proj-2")
    third = cluster.start(env=env, lease=False)
    assert third.name == "proj-3"
    registry = Registry(cluster.state)
    live = registry.live()
    assert [s.name for s in live] == ["proj", "proj-2", "proj-3"]
    assert [s.pid for s in live] == [first.proc.pid, second.proc.pid, third.proc.pid]
    assert all(os.path.exists(s.address) for s in live)


def test_concurrent_registrations_never_share_a_name(cluster):
    # Start four at once (no waiting between the spawns): the registry lock serialises the name picks.
    snippet = (
        "import sys; from pathlib import Path; from imessage_channel.sessions import *;"
        "m = Registry(Path(sys.argv[1])).register(new_session_id(), 'same'); print(m.info.name, flush=True);"
        "sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", snippet, str(cluster.state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        names = sorted(p.stdout.readline().strip() for p in procs)  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert names == ["same", "same-2", "same-3", "same-4"]


def test_a_session_killed_with_sigkill_is_recognised_as_dead(cluster):
    a = cluster.start("proj", lease=False)
    b = cluster.start("proj", lease=False)
    registry = Registry(cluster.state)
    assert [s.name for s in registry.live()] == ["proj", "proj-2"]
    b.kill()  # no chance to unregister: its entry stays, its lock is gone
    assert (cluster.state / "sessions" / f"{b.id}.json").exists()
    assert [s.name for s in registry.live()] == ["proj"]
    assert not registry.is_live(b.id)
    assert registry.is_live(a.id)
    assert [s.id for s in registry.prune()] == [b.id]
    assert not (cluster.state / "sessions" / f"{b.id}.json").exists()
    assert not (cluster.state / "sessions" / f"{b.id}.lock").exists()
    assert cluster.start("proj", lease=False).name == "proj-2"


def test_a_clean_quit_unregisters(cluster):
    a = cluster.start("proj", lease=False)
    a.quit()
    assert Registry(cluster.state).live() == []
    assert not list((cluster.state / "sessions").glob("*.json"))


# -- lease --------------------------------------------------------------------------------------------
def test_lease_in_process(tmp_path):
    one, two = ReaderLease(tmp_path, "aaaa0001"), ReaderLease(tmp_path, "bbbb0002")
    assert one.try_acquire()
    assert one.try_acquire()  # already held: still True
    assert not two.try_acquire()
    assert not two.acquire(timeout=0)
    assert lease_mod.is_held(tmp_path)
    assert lease_mod.holder(tmp_path)["session"] == "aaaa0001"  # type: ignore[index]
    took = threading.Event()
    two.watch(took.set)
    one.release()
    assert took.wait(10)  # the watcher's flock returned as the lock was let go
    assert two.held and two.wait(0)
    assert lease_mod.holder(tmp_path)["session"] == "bbbb0002"  # type: ignore[index]
    two.release()
    assert not lease_mod.is_held(tmp_path)
    assert one.acquire(timeout=5)
    one.release()


def test_a_stopped_watcher_lets_go_at_once(tmp_path):
    holder, waiter = ReaderLease(tmp_path), ReaderLease(tmp_path)
    assert holder.try_acquire()
    waiter.watch()
    waiter.stop_watching()
    holder.release()
    third = ReaderLease(tmp_path)
    assert third.acquire(timeout=10)  # the stopped watcher may take it for an instant, never keeps it
    assert not waiter.held


def test_the_lease_passes_to_a_survivor_when_the_holder_is_killed(cluster):
    nodes = [cluster.start("s") for _ in range(3)]
    first = cluster.reader()
    assert lease_mod.is_held(cluster.state)
    assert not ReaderLease(cluster.state).try_acquire()
    first.kill()
    second = cluster.reader([n for n in nodes if n is not first])
    assert not ReaderLease(cluster.state).try_acquire()
    second.kill()
    third = cluster.reader([n for n in nodes if n not in (first, second)])
    assert sorted(n.name for n in (first, second, third)) == ["s", "s-2", "s-3"]
    assert sum(n.is_reader() for n in nodes) == 3  # each took it exactly once, one after the other
    third.quit()
    assert not lease_mod.is_held(cluster.state)


def test_a_lone_session_delivers_as_before_and_strips_its_own_name(cluster):
    rows = cluster.table  # type: ignore[attr-defined]
    only = cluster.start("proj")
    cluster.reader([only])
    rows.add("@proj run the tests")
    rows.add("hello")
    rows.add("@other hi")
    cluster.wait_until(lambda: len(only.events()) == 3)
    assert [(e["params"]["content"], e["params"]["meta"]) for e in only.events()] == [
        ("run the tests", {"message_id": rows.guids[0], "chat_id": "iMessage;-;+15555550100"}),
        ("hello", {"message_id": rows.guids[1], "chat_id": "iMessage;-;+15555550100"}),
        ("@other hi", {"message_id": rows.guids[2], "chat_id": "iMessage;-;+15555550100"}),
    ]
    only.quit()
