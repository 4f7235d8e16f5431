"""Command line: `imessage-channel [serve|demo|messages] …`.

Owns argument parsing and the user-facing output of each sub-command; the work itself lives in the
modules named after it. With no sub-command it serves the channel (what `.mcp.json` runs). Errors a
user can fix (no chat.db, no Full Disk Access) print one paragraph on stderr and exit 2, with no
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..chatdb import ChatDB, ChatDBError, Message
from ..render import describe, render_conversation
from ..settings import Settings, SettingsError
from .progress import Progress


def _message_json(msg: Message) -> dict[str, object]:
    return {
        "rowid": msg.rowid,
        "guid": msg.guid,
        "chat_guid": msg.chat_guid,
        "chat_style": msg.chat_style,
        "sender": msg.sender,
        "handle": msg.handle,
        "service": msg.service,
        "is_from_me": msg.is_from_me,
        "date": msg.date.isoformat() if msg.date else None,
        "kind": msg.kind.value,
        "text": msg.text,
        "reply_to": msg.reply_to,
        "tapback": (
            {
                "reaction": msg.tapback.reaction,
                "emoji": msg.tapback.emoji,
                "target_guid": msg.tapback.target_guid,
                "removed": msg.tapback.removed,
            }
            if msg.tapback
            else None
        ),
        "attachments": [
            {"path": a.path, "mime_type": a.mime_type, "name": a.name, "transfer_state": a.transfer_state}
            for a in msg.attachments
        ],
    }


def cmd_messages(args: argparse.Namespace) -> int:
    """Print recent messages as the channel reads them: per-chat blocks, or JSON with --json."""
    with ChatDB(args.db or args.settings.db_path) as db, Progress("reading messages", total=args.limit) as progress:
        if args.chat and db.chat(args.chat) is None:
            progress.close()
            return _fail(
                args,
                f"no chat has the GUID {args.chat!r}; `imessage-channel messages` lists recent messages with "
                "their chats (e.g. 'iMessage;-;+15555550123')",
                1,
            )
        if args.chat:
            msgs = db.last_messages(args.chat, args.limit, progress.advance)
        else:
            msgs = db.recent(args.limit, progress.advance)
        progress.close()
        if args.json:
            json.dump([_message_json(m) for m in msgs], sys.stdout, ensure_ascii=False, indent=2)
            sys.stdout.write("\n")
            return 0
        if not msgs:
            print("No messages." if not args.chat else f"No messages in {args.chat}.")
            return 0

        blocks: list[tuple[str | None, list[Message]]] = []
        for msg in msgs:
            if not blocks or blocks[-1][0] != msg.chat_guid:
                blocks.append((msg.chat_guid, []))
            blocks[-1][1].append(msg)
        out = []
        for guid, chunk in blocks:
            chat = db.chat(guid) if guid else None
            if chat is None:
                out.append("== (no chat yet) ==\n" + "\n".join(f"#{m.rowid} {describe(m)}" for m in chunk))
                continue
            out.append(
                render_conversation(
                    chat, db.participants(chat.guid), chunk, quote=db.text_of, include_receipts=True, show_kind=True
                )
            )
        print("\n\n".join(out))
    return 0


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Report an error the way the command was asked to speak: `{"error": …}` on stdout with `--json`, else
    one paragraph on stderr. Returns `code`."""
    if getattr(args, "json", False):
        json.dump({"error": message}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(f"imessage-channel: {message}", file=sys.stderr)
    return code


def _at_least_one(value: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _serve() -> int:
    from ..server import main as serve_main

    return serve_main()


def _demo(_args: argparse.Namespace) -> int:
    from .demo import run

    return run()


def _access(args: argparse.Namespace) -> int:
    from .access import run

    return run(args)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(args)


def _watch(args: argparse.Namespace) -> int:
    from .watch import run

    return run(args)


def _add_access_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`access` and its verbs (the official `/imessage:access` skill's, see access_cli)."""
    # `--json` is accepted before or after the verb; SUPPRESS keeps a sub-parser from resetting it.
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = sub.add_parser(
        "access",
        parents=[as_json],
        help="show or change who may reach Claude (access.json)",
        description="With no verb: show the policy, allowed handles, pending pairing codes and groups.",
    )
    p.set_defaults(func=_access, verb=None)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    v = verbs.add_parser("pair", parents=[as_json], help="approve a pairing code: allow its sender")
    v.add_argument("code", help="the 6-character code the sender was texted")
    v = verbs.add_parser("deny", parents=[as_json], help="discard a pairing code")
    v.add_argument("code")
    v = verbs.add_parser("allow", parents=[as_json], help="allow a handle (phone or email), or a contact by name")
    v.add_argument("handle", metavar="handle|name")
    v = verbs.add_parser("remove", parents=[as_json], help="remove a handle, or a contact by name, from the allowlist")
    v.add_argument("handle", metavar="handle|name")
    v = verbs.add_parser("policy", parents=[as_json], help="set the DM policy")
    v.add_argument("mode", metavar="pairing|allowlist|disabled")
    group = verbs.add_parser("group", help="opt group chats in or out")
    group_verbs = group.add_subparsers(dest="group_verb", required=True, metavar="add|rm")
    v = group_verbs.add_parser("add", parents=[as_json], help="opt a group chat in")
    v.add_argument("guid", help="the group's chat GUID, e.g. 'iMessage;+;chat123456789'")
    v.add_argument("--no-mention", action="store_true", help="deliver every message, not only mentions")
    v.add_argument("--allow", default="", metavar="A,B", help="only these members may trigger Claude")
    v = group_verbs.add_parser("rm", parents=[as_json], help="opt a group chat out")
    v.add_argument("guid")
    v = verbs.add_parser("set", parents=[as_json], help="set a delivery setting")
    v.add_argument("key", metavar="textChunkLimit|chunkMode|mentionPatterns|appendSignature|signature")
    v.add_argument("value")
    route = verbs.add_parser("route", help="pin a chat to a session (many Claude Code sessions on one Mac)")
    route_verbs = route.add_subparsers(dest="route_verb", required=True, metavar="add|rm")
    v = route_verbs.add_parser("add", parents=[as_json], help="texts in this chat go to that session while it runs")
    v.add_argument("guid", help="the chat GUID (an event's chat_id), e.g. 'iMessage;-;+15551234567'")
    v.add_argument("session", help="the session's name (IMESSAGE_SESSION_NAME, or its project folder's name)")
    v = route_verbs.add_parser("rm", parents=[as_json], help="unpin a chat")
    v.add_argument("guid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imessage-channel",
        description="A Claude Code channel for iMessage. With no command: serve the channel over stdio.",
    )
    parser.add_argument("--version", action="version", version=f"imessage-channel {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("serve", help="serve the channel over stdio (the default)")
    p.set_defaults(func=lambda _args: _serve())

    p = sub.add_parser("demo", help="run the whole loop against a bundled fixture chat.db (any OS)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("messages", help="print recent messages as the channel reads them")
    p.add_argument("--db", type=Path, help="chat.db path (default: IMESSAGE_DB_PATH or ~/Library/Messages/chat.db)")
    p.add_argument("--chat", help="only this chat GUID (e.g. 'iMessage;-;+15555550123')")
    p.add_argument("--limit", type=_at_least_one, default=20, help="how many messages (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_messages)

    _add_access_parser(sub)

    p = sub.add_parser("doctor", help="check that everything the channel needs is in place")
    p.add_argument("--db", type=Path, help="chat.db path (default: IMESSAGE_DB_PATH or ~/Library/Messages/chat.db)")
    p.add_argument("--send-test", action="store_true", help="also text yourself a test message (checks Automation)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("watch", help="show new messages live with the gate's decision (why a text was dropped)")
    p.add_argument("--db", type=Path, help="chat.db path (default: IMESSAGE_DB_PATH or ~/Library/Messages/chat.db)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--last", type=int, metavar="N", help="first show decisions for the last N messages")
    start.add_argument("--from-rowid", type=int, metavar="ROWID", help="first show decisions for rows after ROWID")
    p.add_argument(
        "--once",
        action="store_true",
        help="print the decisions for --last/--from-rowid (default: the last 20), then exit",
    )
    p.set_defaults(func=_watch)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub-)parser the default `parser_=itself`: after parsing, `args.parser_` is the deepest
    sub-command's parser, so its errors show its own usage line, not the top-level one."""
    parser.set_defaults(parser_=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imessage-channel` console script. Returns the process exit code: 2 for a problem
    the user can fix (said in one paragraph on stderr), 130 when interrupted (Ctrl-C), never a traceback for
    either."""
    args = argparse.Namespace()
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the sub-command's own parser, with its own usage line
            getattr(args, "parser_", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None or args.command == "serve":
            return _serve()  # reads and checks the settings itself (it reports them as the channel starts)
        args.settings = Settings.from_env()
        return int(args.func(args))
    except (ChatDBError, SettingsError) as exc:
        return _fail(args, str(exc), 2)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
