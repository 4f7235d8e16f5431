"""imessage-channel: a Claude Code channel that reads the Mac's Messages database (chat.db)
and answers through AppleScript."""

__version__ = "0.1.0"
