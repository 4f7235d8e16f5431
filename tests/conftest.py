"""Shared test fixtures: fresh fixture chat.db files with a Messages simulator, and the real reference DB.

- `chatdb_factory(version="ventura", **simulator_options)` → `(path, MessagesSimulator)`: an empty chat.db
  with Apple's schema for that macOS release (WAL mode), in its own folder under `tmp_path`. Simulators
  are closed at teardown.
- `reference_db`: a private copy of the real anonymised Ventura chat.db from `../shared/reference`
  (skipped, with the reason, when that folder is absent: the project never needs it to pass).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.simulator import MessagesSimulator

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE_DB = REFERENCE_DIR / "ventura-real.chat.db"

ChatDBFactory = Callable[..., tuple[Path, MessagesSimulator]]


@pytest.fixture
def chatdb_factory(tmp_path: Path) -> Iterator[ChatDBFactory]:
    """Build `(path, simulator)` pairs: `chatdb_factory("sonoma", owner_phone="+15555550100")`."""
    sims: list[MessagesSimulator] = []

    def make(version: str = "ventura", **options: object) -> tuple[Path, MessagesSimulator]:
        folder = tmp_path / f"{version}-{len(sims)}"
        folder.mkdir()
        path = create_chatdb(folder / "chat.db", version)
        sim = MessagesSimulator(path, **options)  # type: ignore[arg-type]
        sims.append(sim)
        return path, sim

    yield make
    for sim in sims:
        sim.close()


@pytest.fixture
def reference_db(tmp_path: Path) -> Path:
    """A writable copy of `shared/reference/ventura-real.chat.db` (a real Ventura chat.db)."""
    if not REFERENCE_DB.is_file():
        pytest.skip(f"reference chat.db not present at {REFERENCE_DB} (it lives outside the project)")
    folder = tmp_path / "reference"
    folder.mkdir()
    return Path(shutil.copy2(REFERENCE_DB, folder / "chat.db"))
