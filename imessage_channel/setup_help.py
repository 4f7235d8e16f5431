"""What the Mac must allow before the channel can work, and the words that say so.

Owns the explanations of the two macOS privacy permissions the channel needs — Full Disk Access (to read
chat.db and the Contacts store) and Automation (to make Messages send) — named for the app that starts Claude
Code, and the diagnosis of a chat.db that cannot be read (no Mac, a wrong path, Messages never opened, no
Full Disk Access). Claude Code hides a server's stderr, so these words reach the user as the channel's
`kind="status"` events and tool errors (`channel`), and in `imessage-channel doctor`.

Which app: macOS sets `__CFBundleIdentifier` in the environment of a program started from an app (Terminal,
iTerm2, VS Code…) and terminals set `TERM_PROGRAM`; TCC grants both permissions to that "responsible" app,
not to Python or `uv` (Apple Platform Security, "Controlling app access to files in macOS").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

APPS_BY_BUNDLE = {
    "com.apple.Terminal": "Terminal",
    "com.googlecode.iterm2": "iTerm",
    "com.microsoft.VSCode": "Visual Studio Code",
    "com.todesktop.230313mzl4w4u92": "Cursor",
    "dev.warp.Warp-Stable": "Warp",
    "com.mitchellh.ghostty": "Ghostty",
    "net.kovidgoyal.kitty": "kitty",
    "io.alacritty": "Alacritty",
    "com.github.wez.wezterm": "WezTerm",
    "dev.zed.Zed": "Zed",
    "com.jetbrains.intellij": "IntelliJ IDEA",
    "com.anthropic.claudefordesktop": "Claude",
}
"""`__CFBundleIdentifier` of apps Claude Code is commonly started from → the name System Settings shows."""

APPS_BY_TERM_PROGRAM = {
    "Apple_Terminal": "Terminal",
    "iTerm.app": "iTerm",
    "vscode": "Visual Studio Code",
    "WarpTerminal": "Warp",
    "ghostty": "Ghostty",
    "WezTerm": "WezTerm",
}
"""`TERM_PROGRAM` values → app names, for when the bundle id is not set or not known."""

RECHECK_S = 3.0
"""How often a channel that cannot read chat.db looks again (a user granting Full Disk Access expects the
channel to notice within seconds, without restarting Claude Code)."""


def host_app(bundle_id: str | None, term_program: str | None) -> str | None:
    """The name of the app that started us, as System Settings lists it, or None when unknown."""
    if bundle_id and bundle_id in APPS_BY_BUNDLE:
        return APPS_BY_BUNDLE[bundle_id]
    if term_program and term_program in APPS_BY_TERM_PROGRAM:
        return APPS_BY_TERM_PROGRAM[term_program]
    return None


def _app_words(app: str | None) -> str:
    return app if app else "the app you start Claude Code from (your terminal, or your editor)"


def full_disk_access(app: str | None) -> str:
    """How to give `app` (None: unknown) Full Disk Access."""
    who = _app_words(app)
    return (
        f"Give {who} Full Disk Access: System Settings → Privacy & Security → Full Disk Access → turn on {who} "
        f"(add it with + if it is not listed), then quit and reopen {who}."
    )


def automation(app: str | None) -> str:
    """How to let `app` (None: unknown) control Messages (AppleScript error -1743)."""
    who = _app_words(app)
    return (
        f"Let {who} control Messages: System Settings → Privacy & Security → Automation → {who} → turn on "
        "Messages (macOS asks once; if you said no then, it is switched off there)."
    )


def explain_unreadable(path: Path, default: Path, platform: str, app: str | None) -> str:
    """Why chat.db at `path` cannot be read, and the exact fix, in one paragraph. `default` is where Messages
    keeps it (`Settings` default); `platform` is `sys.platform`. Looks at the file system itself: a missing
    path, Messages never opened, or (on a Mac, when the file is there or hidden) Full Disk Access."""
    expanded_default = default.expanduser()
    if platform != "darwin" and path == expanded_default:
        return (
            f"This is not a Mac: {path} exists only on a Mac signed in to Messages. Point IMESSAGE_DB_PATH at a "
            "copy of a chat.db, or try `imessage-channel demo`."
        )
    try:
        os.stat(path)
    except FileNotFoundError:
        if path != expanded_default:
            return f"IMESSAGE_DB_PATH points to {path}, which does not exist: correct the path, or unset it."
        if not path.parent.exists():
            return (
                f"Messages has never been opened by this user ({path.parent} does not exist): open Messages, sign "
                "in with your Apple Account, and text yourself once."
            )
        return f"Messages has not created {path} yet: open Messages and text yourself once."
    except PermissionError:
        return f"macOS keeps {path} from this program. " + full_disk_access(app)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return f"macOS keeps {path} from this program. " + full_disk_access(app)
        return f"{path} cannot be read ({exc.strerror}). " + full_disk_access(app)
    return f"{path} is there but cannot be read. " + full_disk_access(app)
