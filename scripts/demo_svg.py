"""Render the README's demo picture (`docs/demo.svg`) from a real run of `imessage-channel demo`.

The picture is never edited by hand: this script runs the demo, takes its output as printed, and renders it
as a terminal window with `rich` (its SVG export). The working-copy folder is the only part replaced (it is
a random temporary path); timings are the run's own. `tests/test_newcomer.py` checks that every line of a
fresh demo run, numbers aside, is in the committed picture, so the two cannot drift apart.

    uv run --group docs python scripts/demo_svg.py [--out docs/demo.svg]
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 110
WORKING_COPY = re.compile(r"/\S*/imessage-demo-[^/\s]+/")


def demo_output() -> str:
    """The demo's stdout (exits non-zero when the demo failed)."""
    done = subprocess.run(
        [sys.executable, "-m", "imessage_channel", "demo"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return WORKING_COPY.sub("/tmp/imessage-demo-…/", done.stdout)


def render(output: str, out: Path) -> None:
    """Write `output` as an SVG terminal window to `out`."""
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True)
    console.print(Text("$ uv run imessage-channel demo", style="bold"))
    for line in output.splitlines():
        style = "green" if line.startswith("✓") else "red" if line.startswith("✗") else ""
        console.print(Text(line, style=style), overflow="fold")
    console.save_svg(str(out), title="imessage-channel demo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.svg")
    args = parser.parse_args()
    render(demo_output(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
