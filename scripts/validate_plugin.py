"""Check the plugin with the real Claude Code CLI: manifests valid, installable, and what `claude mcp list` shows.

Opt-in (not run in CI, not part of pytest). In a throwaway HOME it runs:
1. `claude plugin validate .claude-plugin/plugin.json --strict` and the same for `marketplace.json` (offline);
2. `claude plugin marketplace add <source>` (default: this repo) and `claude plugin install <plugin>@<marketplace>`
   (names read from the two manifests);
3. `claude --debug-file F mcp list` twice, with IMESSAGE_DB_PATH in the environment of `claude` pointing first at
   a readable fixture chat.db, then at a missing path. The plugin's `.mcp.json` starts the server with
   `uv run --directory ${CLAUDE_PLUGIN_ROOT} … imessage-channel serve`. Both outputs are printed verbatim, with
   the server's stderr that Claude Code logged in its debug file.
Exit code 1 when a validation or the install fails, or `mcp list` does not show the server connected in both
cases: a channel that cannot read chat.db still connects and says what is missing (a `kind="status"` event,
`channel.Channel`), so Claude Code can tell the owner the fix instead of showing "Failed to connect".

Prerequisites: the CLI, found as scripts/e2e_claude_code.py finds it (`--claude PATH`, or the copy cached in
scripts/out/claude-code/, npm-installed there when missing unless `--no-install`), and uv on PATH. Without the
CLI it prints `skipped: <why>` and exits 0.

Run from the repo root:
    uv run --no-sync python scripts/validate_plugin.py [--claude PATH] [--source DIR | --snapshot] [--keep]

Found with CLI 2.1.197: `plugin install` from a directory marketplace copies the whole directory, gitignored files
included (.venv, scripts/out: ~550 MB here), into HOME's plugin cache, yet `${CLAUDE_PLUGIN_ROOT}` is the source
directory itself (`uv run --directory /work/main/`). `--snapshot` installs from a copy of the git-tracked files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e_claude_code import find_claude

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = (ROOT / ".claude-plugin" / "plugin.json", ROOT / ".claude-plugin" / "marketplace.json")
EXPECTED = {"readable": "✔ Connected", "missing": "✔ Connected"}
STDERR_RE = re.compile(r'^\S+Z \[\w+\] MCP server "([^"]+)" Server stderr: (.*)$')


def claude_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without Claude/Anthropic/iMessage settings, with the throwaway HOME. uv keeps the
    user's cache (UV_CACHE_DIR), so the plugin's `uv run` does not download again; DISABLE_AUTOUPDATER keeps
    the CLI from `npm install -g`-ing a newer version of itself."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE", "IMESSAGE_"))}
    uv_cache = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True).stdout.strip()
    env = keep | {"HOME": str(home), "DISABLE_AUTOUPDATER": "1"}
    if uv_cache:
        env.setdefault("UV_CACHE_DIR", uv_cache)
    return env | (extra or {})


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a `claude` command and print it with its output, verbatim."""
    print(f"$ claude {' '.join(argv[1:])}", flush=True)
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = (done.stdout + done.stderr).rstrip("\n")
    print(output)
    print(f"[exit {done.returncode}]\n", flush=True)
    return done


def validate(claude: Path, env: dict[str, str], cwd: Path) -> bool:
    ok = True
    for manifest in MANIFESTS:
        ok &= run([str(claude), "plugin", "validate", str(manifest), "--strict"], env, cwd).returncode == 0
    return ok


def install(claude: Path, env: dict[str, str], cwd: Path, source: Path) -> bool:
    plugin = json.loads(MANIFESTS[0].read_text(encoding="utf-8"))["name"]
    marketplace = json.loads(MANIFESTS[1].read_text(encoding="utf-8"))["name"]
    if run([str(claude), "plugin", "marketplace", "add", str(source)], env, cwd).returncode != 0:
        return False
    return run([str(claude), "plugin", "install", f"{plugin}@{marketplace}"], env, cwd).returncode == 0


def server_stderr(debug_file: Path) -> list[str]:
    """The server stderr lines Claude Code wrote into its debug file (a record may span several lines)."""
    lines: list[str] = []
    inside = False
    text = debug_file.read_text(encoding="utf-8", errors="replace") if debug_file.exists() else ""
    for line in text.splitlines():
        if match := STDERR_RE.match(line):
            inside = True
            lines.append(f"[{match.group(1)}] {match.group(2)}")
        elif re.match(r"^\d{4}-\d\d-\d\dT", line):
            inside = False
        elif inside:
            lines.append(f"    {line}")
    return lines


def mcp_list(claude: Path, home: Path, cwd: Path, case: str, db: Path) -> bool:
    """`claude mcp list` with IMESSAGE_DB_PATH=db; True when it shows what `case` expects."""
    print(f"--- claude mcp list, IMESSAGE_DB_PATH={db} ({case}) ---")
    debug = cwd / f"mcp-list-{case}.debug.log"
    env = claude_env(home, {"IMESSAGE_DB_PATH": str(db)})
    done = run([str(claude), "--debug-file", str(debug), "mcp", "list"], env, cwd)
    stderr = server_stderr(debug)
    print("server stderr, as logged in Claude Code's debug file:" if stderr else "(no server stderr logged)")
    for line in stderr:
        print(f"  {line}")
    print()
    ours = [line for line in done.stdout.splitlines() if "imessage" in line]
    return bool(ours) and all(EXPECTED[case] in line for line in ours)


def fixture_db(work: Path) -> Path:
    (work / "Messages").mkdir()
    db = create_chatdb(work / "Messages" / "chat.db", "sequoia")
    with MessagesSimulator(db, owner="owner@example.com", owner_phone="+15555550100") as sim:
        sim.text_self("a note to self", sim.self_chat(), typed_on="mac")
    return db


def snapshot(work: Path) -> Path:
    """A copy of the repo's git-tracked files (with their working-tree content): what a user who adds the
    marketplace from GitHub gets, without .venv and scripts/out. The plugin's `uv run` then builds its own
    environment there, as on a user's first start."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    target = work / "snapshot"
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def check(claude: Path, work: Path, source: Path) -> bool:
    home = work / "home"
    home.mkdir()
    env = claude_env(home)
    results = {"validate": validate(claude, env, work)}
    results["install"] = install(claude, env, work, source)
    if results["install"]:
        results["mcp list (readable chat.db)"] = mcp_list(claude, home, work, "readable", fixture_db(work))
        results["mcp list (missing chat.db)"] = mcp_list(claude, home, work, "missing", work / "nowhere" / "chat.db")
    for name, ok in results.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(results.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claude", help="the claude executable (default: the copy in scripts/out/claude-code)")
    parser.add_argument("--no-install", action="store_true", help="do not npm-install the CLI when missing")
    parser.add_argument("--source", type=Path, default=ROOT, help="the local marketplace to add (default: repo)")
    parser.add_argument("--snapshot", action="store_true", help="add a copy of the git-tracked files instead")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway HOME and debug files")
    args = parser.parse_args(argv)
    claude = find_claude(args.claude, not args.no_install)
    if isinstance(claude, str):
        print(f"skipped: {claude}")
        return 0
    if not shutil.which("uv"):
        print("skipped: uv not found (the plugin's server starts with `uv run`)")
        return 0
    version = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="imessage-plugin-")).resolve()
    print(f"Claude Code {version}; throwaway HOME under {work}\n", flush=True)
    try:
        source = snapshot(work) if args.snapshot else args.source.resolve()
        ok = check(claude, work, source)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
