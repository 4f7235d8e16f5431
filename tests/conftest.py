"""Shared test fixtures: fresh fixture chat.db files with a Messages simulator, and the real reference DB.

- `chatdb_factory(version="ventura", **simulator_options)` → `(path, MessagesSimulator)`: an empty chat.db
  with Apple's schema for that macOS release (WAL mode), in its own folder under `tmp_path`. Simulators
  are closed at teardown.
- `reference_db`: a private copy of the real anonymised Ventura chat.db in `fixtures/reference` (MIT-licensed
  test data of xevg/imessagedb; source and licence beside it).
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures import REFERENCE_DB
from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator
from tests import zygote_client
from tests.harness import DemoRun

ChatDBFactory = Callable[..., tuple[Path, MessagesSimulator]]

os.environ.update(zygote_client.constants())  # servers forked for tests take the pauses shorter (see there)

PYCACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "pycache"
"""Where the suite keeps compiled bytecode when the environment forbids writing it (`PYTHONDONTWRITEBYTECODE`):
without it every test process (each xdist worker, the fork server, each CLI run, each fake `osascript`) compiles
pytest, the package and every test module again (assertion rewriting included), about 4 s of CPU per worker. The
cache stays out of the source tree (under `.pytest_cache`, as `PYTHONPYCACHEPREFIX`)."""

if sys.dont_write_bytecode and sys.pycache_prefix is None:
    sys.dont_write_bytecode = False
    sys.pycache_prefix = str(PYCACHE)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)


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
    """A writable copy of `fixtures/reference/ventura-real.chat.db` (a real Ventura chat.db)."""
    folder = tmp_path / "reference"
    folder.mkdir()
    return Path(shutil.copy2(REFERENCE_DB, folder / "chat.db"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo command, run once per test run (it starts two interpreters: ~3 s of CPU). Under xdist the
    first worker that needs it runs it, holding a lock in the run's shared temporary folder, and leaves the
    result there for the others."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _run_demo()
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder; each worker's basetemp is below it
    with (shared / "demo_run.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        saved = shared / "demo_run.pickle"
        if saved.exists():
            return pickle.loads(saved.read_bytes())
        run = _run_demo()
        saved.write_bytes(pickle.dumps(run))
        return run


def _run_demo() -> DemoRun:
    from imessage_channel.cli.demo import demo_db_path

    before = demo_db_path().read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMESSAGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "imessage_channel", "demo"], capture_output=True, text=True, timeout=120, env=env
    )
    return DemoRun(done.returncode, done.stdout, done.stderr, before, demo_db_path().read_bytes())


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for `-n auto`: two per core (at most 8). Most tests spend their time waiting for a server
    process to answer, so one worker per core leaves the CPU idle (2 cores: 58 s with 2 workers, 46 s with 4)."""
    return min(2 * (os.cpu_count() or 1), 8)
