"""Contacts: names for handles from fixture AddressBook stores, change detection, the resolver, `meta_name`.

Every store is a real SQLite file written by `fixtures/addressbook_builder.py`. No test sleeps or reads the
time: change checks are forced (`refresh(force=True)`) or paced by a `ManualClock`, and an edit moves the file's
mtime on by a second, as a real edit seconds after the last read would (a test edits within one tick of the file
system's clock, where mtime alone could not tell).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.addressbook_builder import (
    Card,
    add_contacts,
    create_addressbook,
    create_addressbook_dir,
    fake_uuid,
    insert_contacts,
    store_path,
)
from imessage_channel import contacts as contacts_mod
from imessage_channel.clock import ManualClock
from imessage_channel.contacts import (
    AmbiguousContact,
    Contact,
    ContactNotFound,
    Contacts,
    ContactsUnavailable,
    meta_name,
)

LOGGER = "imessage_channel.contacts"


def _edited(path: Path) -> None:
    """Move `path`'s mtime a second on: what a later real edit would show (see the module docstring)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def _main(tmp_path: Path) -> Path:
    """Where the main store of the AddressBook folder under `tmp_path` goes."""
    return store_path(tmp_path / "AddressBook")


def _book(tmp_path: Path, *cards: Card, region: str | None = "US", **options: object) -> Contacts:
    root = create_addressbook_dir(tmp_path / "AddressBook", main=cards)
    return Contacts(root, region=region, **options)  # type: ignore[arg-type]


# --- names for handles ---------------------------------------------------------------------------------------

PHONES = [
    pytest.param("(415) 555-0132", "US", "+14155550132", id="US national with parentheses"),
    pytest.param("+1 415 555 0132", "US", "+14155550132", id="international with spaces"),
    pytest.param("4155550132", "US", "+14155550132", id="ten bare digits"),
    pytest.param("1-415-555-0132", "US", "+14155550132", id="trunk 1 with dashes"),
    pytest.param("+1 (415) 555-0132", "US", "+14155550132", id="international with parentheses"),
    pytest.param("415.555.0132", "US", "+14155550132", id="dots"),
    pytest.param("  +14155550132  ", "US", "+14155550132", id="E.164 with padding"),
    pytest.param("+44 (0) 20 7946 0958", "US", "+442079460958", id="UK with the (0) trunk prefix"),
    pytest.param("020 7946 0958", "GB", "+442079460958", id="UK national read in region GB"),
    pytest.param("+1 415 555 0132", None, "+14155550132", id="international needs no region"),
    pytest.param("72727", "US", "72727", id="SMS short code"),
]


@pytest.mark.parametrize(("stored", "region", "handle"), PHONES)
def test_a_number_in_any_format_names_its_handle(tmp_path, stored, region, handle):
    book = _book(tmp_path, Card("Jane", "Appleseed", phones=[stored]), region=region)
    assert book.name_for(handle) == "Jane Appleseed"


@pytest.mark.parametrize(
    "handle",
    [
        pytest.param("+14155550132", id="E.164"),
        pytest.param("p:+14155550132", id="account prefix"),
        pytest.param("14155550132", id="without the plus"),
    ],
)
def test_a_handle_in_any_chatdb_form_finds_the_number(tmp_path, handle):
    assert _book(tmp_path, Card("Jane", phones=["(415) 555-0132"])).name_for(handle) == "Jane"


@pytest.mark.parametrize(
    ("stored", "handle"),
    [
        pytest.param("Jane@Example.COM", "jane@example.com", id="stored mixed case"),
        pytest.param("jane@example.com", "JANE@EXAMPLE.COM", id="handle upper case"),
        pytest.param(" jane@example.com ", "E:Jane@example.com", id="padding and account prefix"),
        pytest.param("mailto:jane@example.com", "jane@example.com", id="mailto prefix"),
    ],
)
def test_emails_match_case_insensitively(tmp_path, stored, handle):
    assert _book(tmp_path, Card("Jane", "Appleseed", emails=[stored])).name_for(handle) == "Jane Appleseed"


@pytest.mark.parametrize(
    ("card", "name"),
    [
        pytest.param(Card("Jane", "Appleseed"), "Jane Appleseed", id="first and last"),
        pytest.param(Card("Jane", "Appleseed", "Acme"), "Jane Appleseed", id="person name before organisation"),
        pytest.param(Card(organization="Acme Inc."), "Acme Inc.", id="organisation only"),
        pytest.param(Card("Jane"), "Jane", id="first name only"),
        pytest.param(Card(last="Appleseed"), "Appleseed", id="last name only"),
        pytest.param(Card("  Jane \t", " Van  Dyke "), "Jane Van Dyke", id="white space collapsed"),
        pytest.param(Card(" ", "", " "), None, id="blank name parts give no name"),
        pytest.param(Card(), None, id="no name at all"),
    ],
)
def test_display_names(tmp_path, card, name):
    card = Card(card.first, card.last, card.organization, phones=["+14155550132"])
    assert _book(tmp_path, card).name_for("+14155550132") == name


@pytest.mark.parametrize(
    "handle",
    [
        pytest.param("+14155550199", id="another number"),
        pytest.param("+4155550132", id="the same digits in another country"),
        pytest.param("bob@example.com", id="another email"),
        pytest.param("AMAZON", id="alphanumeric sender"),
        pytest.param("", id="empty"),
    ],
)
def test_unknown_handles_have_no_name(tmp_path, handle):
    book = _book(tmp_path, Card("Jane", phones=["(415) 555-0132"], emails=["jane@example.com"]))
    assert book.name_for(handle) is None


def test_a_national_number_without_a_region_names_nobody(tmp_path):
    """With no region, `4155550132` could be any country's: it must not become +4155550132 (Switzerland)."""
    book = _book(tmp_path, Card("Jane", phones=["4155550132"]), region=None)
    assert book.name_for("+14155550132") is None
    assert book.name_for("+4155550132") is None


def test_the_region_callable_is_called_once(tmp_path):
    calls: list[int] = []

    def region() -> str:
        calls.append(1)
        return "us"

    book = _book(tmp_path, Card("Jane", phones=["(415) 555-0132", "(415) 555-0133"]), region=region)
    assert [book.name_for("+14155550132"), book.name_for("+14155550133")] == ["Jane", "Jane"]
    assert calls == [1]


def test_groups_and_cards_without_handles_name_nothing(tmp_path):
    path = create_addressbook(
        _main(tmp_path),
        [Card("Jane"), Card("Kate", phones=["72727"])],
        groups=["Friends"],
    )
    book = Contacts(path.parent, region="US")
    assert book.name_for("72727") == "Kate"
    assert "1 contact with 1 handle from 1 Contacts store" in book.describe()


def test_main_store_and_sources_are_merged_main_first(tmp_path):
    root = create_addressbook_dir(
        tmp_path / "AddressBook",
        main=[Card("On", "My Mac", phones=["+1 415 555 0100"])],
        sources={
            fake_uuid(2): [Card("Google", "Jane", phones=["(415) 555-0100"], emails=["jane@gmail.com"])],
            fake_uuid(1): [
                Card("iCloud", "Kate", phones=["415-555-0101"]),
                Card(organization="Acme", emails=["a@acme.test"]),
            ],
        },
    )
    book = Contacts(root, region="US")
    assert book.name_for("+14155550100") == "On My Mac"  # in main and in a source: main wins
    assert book.name_for("+14155550101") == "iCloud Kate"
    assert book.name_for("jane@gmail.com") == "Google Jane"
    assert book.name_for("a@acme.test") == "Acme"
    assert "4 contacts with 5 handles from 3 Contacts stores" in book.describe()


def test_a_store_with_only_the_needed_columns_works(tmp_path):
    root = create_addressbook_dir(
        tmp_path / "AddressBook",
        main=[Card("Jane", "Appleseed", phones=["(415) 555-0132"], emails=["J@x.test"])],
        minimal=True,
    )
    book = Contacts(root, region="US")
    assert (book.name_for("+14155550132"), book.name_for("j@x.test")) == ("Jane Appleseed", "Jane Appleseed")


def test_text_that_is_not_utf8_is_read_with_replacement_characters(tmp_path):
    path = create_addressbook(_main(tmp_path), [Card("Jane", phones=["72727"])])
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE ZABCDRECORD SET ZLASTNAME = CAST(X'4170706C65FF' AS TEXT) WHERE ZFIRSTNAME = 'Jane'")
    conn.close()
    assert Contacts(path.parent).name_for("72727") == "Jane Apple\ufffd"


def test_reading_never_writes_the_store_nor_holds_a_lock(tmp_path):
    path = create_addressbook(_main(tmp_path), [Card("Jane", phones=["72727"])], wal=False)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    book = Contacts(path.parent)
    assert book.name_for("72727") == "Jane"
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # fails with "database is locked" if a read transaction were left open
    writer.execute("ROLLBACK")
    writer.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# --- missing and unreadable stores ---------------------------------------------------------------------------


def _unreadable_as_folder(path: Path) -> None:
    path.mkdir(parents=True)


def _unreadable_as_text(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("not a database, just text that is long enough to have a header " * 4)


def _missing_column(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE ZABCDRECORD (Z_PK INTEGER PRIMARY KEY, ZFIRSTNAME, ZLASTNAME);"
        "CREATE TABLE ZABCDPHONENUMBER (ZOWNER, ZFULLNUMBER); CREATE TABLE ZABCDEMAILADDRESS (ZOWNER, ZADDRESS);"
        "INSERT INTO ZABCDRECORD VALUES (1, 'Secret', 'Name'); INSERT INTO ZABCDPHONENUMBER VALUES (1, '72727');"
    )
    conn.close()


def _missing_table(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE ZABCDRECORD (Z_PK INTEGER PRIMARY KEY, ZFIRSTNAME, ZLASTNAME, ZORGANIZATION)")
    conn.close()


@pytest.mark.parametrize(
    ("breaks", "said"),
    [
        pytest.param(_unreadable_as_folder, "is a folder", id="a folder named like the store"),
        pytest.param(_unreadable_as_text, "not a database", id="a file that is not SQLite"),
        pytest.param(_missing_column, "column ZABCDRECORD.ZORGANIZATION", id="a missing column"),
        pytest.param(_missing_table, "table ZABCDPHONENUMBER", id="a missing table"),
    ],
)
def test_a_broken_store_gives_no_names_and_one_log_line(tmp_path, caplog, breaks, said):
    root = create_addressbook_dir(tmp_path / "AddressBook", main=[Card("Jane", phones=["+1 415 555 0132"])])
    breaks(store_path(root, fake_uuid(1)))
    book = Contacts(root, region="US")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(5):
            book.refresh(force=True)
            assert book.name_for("72727") is None
        assert book.name_for("+14155550132") == "Jane"  # the readable store still names
    [line] = _warnings(caplog)
    assert said in line and fake_uuid(1) in line
    assert "Secret" not in line and "72727" not in line  # no contact data in the log


def test_a_missing_folder_gives_no_names_and_one_log_line(tmp_path, caplog):
    book = Contacts(tmp_path / "nowhere", region="US")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(5):
            book.refresh(force=True)
            assert book.name_for("+14155550132") is None
        with pytest.raises(ContactsUnavailable, match="Full Disk Access"):
            book.resolve("Jane")
    assert _warnings(caplog) == []  # no Contacts at all (not a Mac, never used) is no fault: said at INFO, once
    [line] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "no Contacts folder at" in line


def test_a_folder_without_stores_gives_one_log_line(tmp_path, caplog):
    (tmp_path / "AddressBook" / "Sources" / fake_uuid(1)).mkdir(parents=True)
    book = Contacts(tmp_path / "AddressBook")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert [book.name_for("72727"), book.refresh(force=True), book.name_for("72727")] == [None, False, None]
    [line] = _warnings(caplog)
    assert "no AddressBook-v22.abcddb in" in line


def test_an_unreadable_store_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    root = tmp_path / "AddressBook"
    _unreadable_as_text(store_path(root))
    reads: list[Path] = []
    real = contacts_mod.read_store
    monkeypatch.setattr(contacts_mod, "read_store", lambda path: reads.append(path) or real(path))
    book = Contacts(root)
    for _ in range(3):
        book.refresh(force=True)
    assert len(reads) == 1
    store_path(root).unlink()
    create_addressbook(store_path(root), [Card("Jane", phones=["72727"])])
    book.refresh(force=True)
    assert book.name_for("72727") == "Jane"


def test_lookups_are_off_when_disabled(tmp_path, caplog):
    book = Contacts(tmp_path / "nowhere", enabled=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert (book.name_for("+14155550132"), book.refresh(force=True)) == (None, False)
        with pytest.raises(ContactsUnavailable, match="IMESSAGE_CONTACTS=off"):
            book.resolve("Jane")
    assert _warnings(caplog) == []
    assert book.describe() == "Contacts lookup is off (IMESSAGE_CONTACTS=off)"


def test_an_unexpected_error_in_a_lookup_is_logged_once_and_gives_none(tmp_path, caplog, monkeypatch):
    book = _book(tmp_path, Card("Jane", phones=["72727"]))

    def boom(self, handle):
        raise RuntimeError("bug")

    monkeypatch.setattr(contacts_mod._Index, "name_for", boom)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert [book.name_for("72727") for _ in range(3)] == [None, None, None]
    assert len(_warnings(caplog)) == 1


def test_a_locked_store_keeps_the_names_read_before(tmp_path, caplog, monkeypatch):
    path = create_addressbook(_main(tmp_path), [Card("Jane", phones=["72727"])], wal=False)
    book = Contacts(path.parent)
    assert book.name_for("72727") == "Jane"
    monkeypatch.setattr(contacts_mod, "BUSY_TIMEOUT_MS", 0)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    _edited(path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert book.refresh(force=True) is False
            assert book.name_for("72727") == "Jane"
        writer.execute("INSERT INTO ZABCDRECORD (ZFIRSTNAME) VALUES ('Kate')")
        writer.execute("INSERT INTO ZABCDPHONENUMBER (ZOWNER, ZFULLNUMBER) VALUES (last_insert_rowid(), '72728')")
        writer.execute("COMMIT")
        writer.close()
        _edited(path)
        assert book.refresh(force=True) is True
    assert book.name_for("72728") == "Kate"
    [line] = _warnings(caplog)
    assert "is locked" in line
    assert any("readable again" in r.getMessage() for r in caplog.records)


# --- change detection ------------------------------------------------------------------------------------------


def test_an_added_contact_appears_after_refresh(tmp_path):
    book = _book(tmp_path, Card("Jane", phones=["(415) 555-0132"]))
    assert book.name_for("+14155550199") is None
    path = store_path(book.directory)
    add_contacts(path, [Card("Kate", "Bell", phones=["415 555 0199"])])
    _edited(path)
    assert book.refresh(force=True) is True
    assert book.name_for("+14155550199") == "Kate Bell"


def test_an_unchanged_store_is_not_read_again(tmp_path, monkeypatch):
    root = create_addressbook_dir(
        tmp_path / "AddressBook",
        main=[Card("Jane", phones=["72727"])],
        sources={fake_uuid(1): [Card("Kate", phones=["72728"])]},
    )
    reads: list[Path] = []
    real = contacts_mod.read_store
    monkeypatch.setattr(contacts_mod, "read_store", lambda path: reads.append(path) or real(path))
    book = Contacts(root)
    assert book.name_for("72727") == "Jane"
    assert len(reads) == 2
    generation = book.generation
    for _ in range(3):
        assert book.refresh(force=True) is False
    assert (len(reads), book.generation) == (2, generation)
    add_contacts(store_path(root, fake_uuid(1)), [Card("Lee", phones=["72729"])])
    _edited(store_path(root, fake_uuid(1)))
    assert book.refresh(force=True) is True
    assert reads[2:] == [store_path(root, fake_uuid(1))]  # only the store that changed
    assert book.name_for("72729") == "Lee"


def test_lookups_check_for_changes_once_per_interval(tmp_path):
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    book = _book(tmp_path, Card("Jane", phones=["72727"]), clock=clock, check_interval=2.0)
    assert book.name_for("72727") == "Jane"
    path = store_path(book.directory)
    add_contacts(path, [Card("Kate", phones=["72728"])])
    _edited(path)
    assert book.name_for("72728") is None  # checked 0 s ago
    clock.advance(1.5)
    assert book.name_for("72728") is None
    clock.advance(0.5)
    assert book.name_for("72728") == "Kate"


def test_a_change_still_in_the_wal_is_seen(tmp_path):
    book = _book(tmp_path, Card("Jane", phones=["72727"]))
    assert book.name_for("72727") == "Jane"
    writer = sqlite3.connect(store_path(book.directory))  # stays open: nothing is checkpointed into the main file
    with writer:
        insert_contacts(writer, [Card("Kate", phones=["72728"])])
    try:
        assert book.refresh(force=True) is True
        assert book.name_for("72728") == "Kate"
    finally:
        writer.close()


def test_a_new_source_folder_is_picked_up_and_a_removed_one_dropped(tmp_path):
    book = _book(tmp_path, Card("Jane", phones=["72727"]))
    assert book.name_for("72728") is None
    create_addressbook(store_path(book.directory, fake_uuid(7)), [Card("Kate", phones=["72728"])])
    assert book.refresh(force=True) is True
    assert book.name_for("72728") == "Kate"
    shutil.rmtree(book.directory / "Sources" / fake_uuid(7))
    assert book.refresh(force=True) is True
    assert (book.name_for("72728"), book.name_for("72727")) == (None, "Jane")


def test_a_replaced_store_is_read_again(tmp_path):
    book = _book(tmp_path, Card("Jane", phones=["72727"]))
    assert book.name_for("72727") == "Jane"
    path = store_path(book.directory)
    fresh = create_addressbook(tmp_path / "new.abcddb", [Card("Kate", phones=["72727"])])
    os.replace(fresh, path)  # a new inode, as a restore or a rebuild makes
    assert book.refresh(force=True) is True
    assert book.name_for("72727") == "Kate"


# --- the resolver ------------------------------------------------------------------------------------------------

PEOPLE = [
    Card("Jane", "Appleseed", phones=["(415) 555-0132"], emails=["Jane@Example.com"]),
    Card("Jane", "Doe", phones=["+1 415 555 0133"]),
    Card("Kate", "Bell", "Creative Consulting", phones=["415-555-0134"]),
    Card("John", "Appleseed", emails=["john@example.com"]),
    Card(organization="Acme Inc", phones=["+1 (415) 555-0135"]),
    Card("Anna", "Haro", phones=["+1 415 555 0136"]),
    Card("Anna", "Haro", phones=["+1 415 555 0137"]),
    Card("Shorty", phones=["72727"]),
]
JANE = Contact("Jane Appleseed", ("+14155550132", "jane@example.com"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("Jane Appleseed", JANE, id="full name"),
        pytest.param("  jane   APPLESEED ", JANE, id="any case and spacing"),
        pytest.param("Appleseed Jane", JANE, id="last name first"),
        pytest.param("Kate", Contact("Kate Bell", ("+14155550134",)), id="unique first name"),
        pytest.param("bell", Contact("Kate Bell", ("+14155550134",)), id="unique last name"),
        pytest.param("Creative Consulting", Contact("Kate Bell", ("+14155550134",)), id="organisation of a person"),
        pytest.param("acme inc", Contact("Acme Inc", ("+14155550135",)), id="organisation card"),
        pytest.param("John", Contact("John Appleseed", ("john@example.com",)), id="email only"),
    ],
)
def test_resolve_finds_the_one_contact(tmp_path, query, expected):
    assert _book(tmp_path, *PEOPLE).resolve(query) == expected


@pytest.mark.parametrize(
    ("query", "error", "names"),
    [
        pytest.param("Jane", AmbiguousContact, ["Jane Appleseed", "Jane Doe"], id="shared first name"),
        pytest.param("Appleseed", AmbiguousContact, ["Jane Appleseed", "John Appleseed"], id="shared last name"),
        pytest.param("Anna Haro", AmbiguousContact, ["Anna Haro", "Anna Haro"], id="two cards one name"),
        pytest.param("Bob", ContactNotFound, [], id="nobody"),
        pytest.param("Jan", ContactNotFound, ["Jane Appleseed", "Jane Doe"], id="unknown with close matches"),
        pytest.param("Shorty", ContactNotFound, [], id="only a short code which access cannot allow"),
        pytest.param("   ", ContactNotFound, [], id="empty"),
    ],
)
def test_resolve_refuses_with_the_candidates(tmp_path, query, error, names):
    with pytest.raises(error) as caught:
        _book(tmp_path, *PEOPLE).resolve(query)
    assert type(caught.value) is error
    assert [c.name for c in caught.value.candidates] == names
    assert caught.value.query == query
    for candidate in caught.value.candidates:
        assert candidate.describe() in str(caught.value)


def test_the_same_card_in_two_accounts_counts_once(tmp_path):
    card = Card("Jane", "Appleseed", phones=["(415) 555-0132"], emails=["jane@example.com"])
    root = create_addressbook_dir(tmp_path / "AddressBook", main=[card], sources={fake_uuid(1): [card]})
    assert Contacts(root, region="US").resolve("Jane Appleseed") == JANE


def test_the_ambiguous_message_lists_handles(tmp_path):
    with pytest.raises(AmbiguousContact) as caught:
        _book(tmp_path, *PEOPLE).resolve("Anna Haro")
    assert "Anna Haro (+14155550136); Anna Haro (+14155550137)" in str(caught.value)


# --- meta_name ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("Jane Appleseed", "Jane Appleseed", id="plain"),
        pytest.param('Robert "Bob" Smith', "Robert \u201dBob\u201d Smith", id="double quotes"),
        pytest.param("Conan O'Brien", "Conan O\u2019Brien", id="apostrophe"),
        pytest.param("a`b", "a\u2019b", id="backtick"),
        pytest.param('x" onclick="y', "x\u201d onclick=\u201dy", id="attribute injection"),
        pytest.param("Eve</channel><channel>", "Eve\u2039/channel\u203a\u2039channel\u203a", id="tag injection"),
        pytest.param("Jane\nAppleseed", "Jane Appleseed", id="newline"),
        pytest.param("Jane\r\n\tAppleseed", "Jane Appleseed", id="CRLF and tab"),
        pytest.param("Jane\u2028Appleseed\u0085", "Jane Appleseed", id="Unicode line breaks"),
        pytest.param("Jane\x00\x1b[31mRed", "Jane [31mRed", id="NUL and escape"),
        pytest.param("evil\u202egnp.exe", "evilgnp.exe", id="bidi override"),
        pytest.param("Ja\u200bne\ufeff", "Jane", id="zero-width space and BOM"),
        pytest.param("Jane\U000e0041\U000e0042", "Jane", id="tag characters"),
        pytest.param("Jane\u00a0 \u3000Doe", "Jane Doe", id="other spaces collapsed"),
        pytest.param("  Jane  ", "Jane", id="trimmed"),
        pytest.param(
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
            id="ZWNJ kept",
        ),
        pytest.param("👩\u200d👩\u200d👧 Family", "👩\u200d👩\u200d👧 Family", id="emoji ZWJ sequence kept"),
        pytest.param("AT&T", "AT&T", id="ampersand kept"),
        pytest.param("\n\t \x07", "", id="nothing printable"),
        pytest.param("x" * 64, "x" * 64, id="exactly the limit"),
        pytest.param("x" * 65, "x" * 63 + "…", id="one over the limit"),
        pytest.param("ab " * 30, ("ab " * 21).rstrip() + "…", id="long, no space before the ellipsis"),
        pytest.param("x" * 62 + "e\u0301\u0301", "x" * 62 + "…", id="cut before a combining sequence"),
        pytest.param("x" * 61 + "👩\u200d👧z", "x" * 61 + "…", id="cut before an emoji ZWJ sequence"),
        pytest.param("x" * 62 + "👍🏽z", "x" * 62 + "…", id="cut before a skin-tone modifier"),
    ],
)
def test_meta_name(name, expected):
    assert meta_name(name) == expected


@pytest.mark.parametrize("limit", [8, 16, 64])
def test_meta_name_never_exceeds_the_limit(limit):
    assert len(meta_name("Jane Appleseed-Smith the Third of Somewhere Far Away, Esq.", limit)) <= limit
