"""The echo filter: our own sends coming back as chat.db rows are recognised, nothing else is."""

from __future__ import annotations

from freezegun import freeze_time

from imessage_channel.echo import ECHO_WINDOW_S, EchoFilter, conversation_key, normalize_text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_normalised_text_ignores_whitespace_placeholders_and_unicode_composition() -> None:
    assert normalize_text("  Done:\n3 files\ufffc  changed ") == "Done: 3 files changed"
    assert normalize_text("cafe\u0301") == normalize_text("café")


def test_conversation_key_ignores_the_service_prefix_and_folds_every_self_chat() -> None:
    assert conversation_key("iMessage;-;a@example.com", self_chat=False) == "a@example.com"
    assert conversation_key("any;-;a@example.com", self_chat=False) == "a@example.com"
    assert conversation_key("iMessage;-;owner@example.com", self_chat=True) == "self"
    assert conversation_key("any;-;+15555550100", self_chat=True) == "self"


def test_a_self_chat_send_absorbs_its_sent_and_received_copies_even_under_another_alias() -> None:
    echo = EchoFilter(clock=Clock())
    echo.record("iMessage;-;owner@example.com", "On it.", self_chat=True)
    assert echo.is_echo("iMessage;-;owner@example.com", "On it.", self_chat=True)
    assert echo.is_echo("any;-;+15555550100", "On it.", self_chat=True)
    assert not echo.is_echo("iMessage;-;owner@example.com", "On it.", self_chat=True)


def test_a_send_elsewhere_absorbs_one_row_in_that_conversation_only() -> None:
    echo = EchoFilter(clock=Clock())
    echo.record("iMessage;-;friend@example.com", "See you", self_chat=False)
    assert not echo.is_echo("iMessage;-;other@example.com", "See you", self_chat=False)
    assert not echo.is_echo("iMessage;-;friend@example.com", "See you", self_chat=True)
    assert echo.is_echo("any;-;friend@example.com", "See you", self_chat=False)
    assert not echo.is_echo("iMessage;-;friend@example.com", "See you", self_chat=False)


def test_echoes_expire_after_the_window() -> None:
    with freeze_time("2026-11-24 12:00:00") as frozen:
        echo = EchoFilter()
        echo.record("iMessage;-;owner@example.com", "late", self_chat=True)
        echo.record("iMessage;-;owner@example.com", "in time", self_chat=True)
        frozen.tick(ECHO_WINDOW_S - 1)
        assert echo.is_echo("iMessage;-;owner@example.com", "in time", self_chat=True)
        frozen.tick(1.001)
        assert not echo.is_echo("iMessage;-;owner@example.com", "late", self_chat=True)


def test_sending_the_same_text_twice_absorbs_twice_as_many_rows() -> None:
    echo = EchoFilter(clock=Clock())
    for _ in range(2):
        echo.record("iMessage;-;friend@example.com", "ok", self_chat=False)
    assert echo.is_echo("iMessage;-;friend@example.com", "ok", self_chat=False)
    assert echo.is_echo("iMessage;-;friend@example.com", "ok", self_chat=False)
    assert not echo.is_echo("iMessage;-;friend@example.com", "ok", self_chat=False)
