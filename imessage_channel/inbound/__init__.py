"""The inbound side: chat.db rows in, channel events and the texts the channel answers itself out.

A package with one job per module (see each module's docstring):
- `pipeline`: the order a row is decided in, and `InboundPipeline.poll()`;
- `cursor`: the read position (watermark, edge GUID, catch-up, re-anchoring), persisted by the ledger;
- `filters`: rows that are not news (age and sync storms, self-chat twins, iCloud duplicates);
- `permissions`: permission prompts open, and the self-chat texts that answer them;
- `events`: what a delivered row looks like to Claude;
- `followups`: downloads, late file joins, edits and unsends of delivered messages;
- `approvals`: the "Paired!" confirmations for `approved/` files;
- `actions`: what the pipeline asks the server to do, and its per-row decisions.
"""

from .actions import Action, Deliver, PermissionVerdict, RowDecision, Send, iso_utc
from .approvals import Approvals
from .cursor import Cursor
from .pipeline import BATCH, JOIN_GRACE_S, InboundPipeline

__all__ = [
    "BATCH",
    "JOIN_GRACE_S",
    "Action",
    "Approvals",
    "Cursor",
    "Deliver",
    "InboundPipeline",
    "PermissionVerdict",
    "RowDecision",
    "Send",
    "iso_utc",
]
