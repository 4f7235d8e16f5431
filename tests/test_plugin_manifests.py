"""The Claude Code plugin files: `.claude-plugin/plugin.json`, `.claude-plugin/marketplace.json`,
`.mcp.json` and `skills/*/SKILL.md`.

Checked against a schema of our own for the fields Claude Code reads (Claude Code plugins reference:
manifest and marketplace references; the `channels` entry binds a key of the plugin's MCP servers),
for names and versions that agree with each other and with pyproject.toml, and for paths that exist.
The server command in `.mcp.json` is run exactly as Claude Code runs it, once with the project's
environment and once as a first run that creates the environment, and its stdout must carry nothing
but JSON-RPC (an install step printing there once broke the official plugin's handshake).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

import imessage_channel
from imessage_channel.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_JSON = ROOT / ".claude-plugin" / "plugin.json"
MARKETPLACE_JSON = ROOT / ".claude-plugin" / "marketplace.json"
MCP_JSON = ROOT / ".mcp.json"
SKILLS = ROOT / "skills"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

KEBAB = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
SEMVER = r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$"
RELATIVE = r"^\./"
STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}
PERSON = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "email": STRING, "url": STRING},
    "additionalProperties": False,
}

PLUGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "description", "author"],
    "additionalProperties": False,
    "properties": {
        "$schema": STRING,
        "name": {"type": "string", "pattern": KEBAB},
        "version": {"type": "string", "pattern": SEMVER},
        "description": {"type": "string", "minLength": 1},
        "author": PERSON,
        "homepage": STRING,
        "repository": STRING,
        "license": STRING,
        "keywords": STRINGS,
        "mcpServers": {"anyOf": [{"type": "string", "pattern": RELATIVE}, {"type": "object"}]},
        "skills": {"anyOf": [{"type": "string", "pattern": RELATIVE}, STRINGS]},
        "channels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["server"],
                "additionalProperties": False,
                "properties": {
                    "server": {"type": "string", "minLength": 1},
                    "displayName": STRING,
                    "userConfig": {"type": "object"},
                },
            },
        },
    },
}

MARKETPLACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "owner", "plugins"],
    "additionalProperties": False,
    "properties": {
        "$schema": STRING,
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]*$"},
        "description": STRING,
        "version": STRING,
        "owner": PERSON,
        "metadata": {"type": "object"},
        "plugins": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "source"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": KEBAB},
                    "source": {"anyOf": [{"type": "string", "pattern": RELATIVE}, {"type": "object"}]},
                    "description": STRING,
                    "version": {"type": "string", "pattern": SEMVER},
                    "author": PERSON,
                    "category": STRING,
                    "homepage": STRING,
                    "keywords": STRINGS,
                    "license": STRING,
                },
            },
        },
    },
}

MCP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["mcpServers"],
    "additionalProperties": False,
    "properties": {
        "mcpServers": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["command"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string", "enum": ["stdio"]},
                    "command": {"type": "string", "minLength": 1},
                    "args": STRINGS,
                    "env": {"type": "object", "additionalProperties": STRING},
                },
            },
        }
    },
}

RESERVED_MARKETPLACE_NAMES = {"official", "inline", "builtin", "skills-dir", "synced", "npm", "github"}
"""Names Claude Code keeps for itself (marketplace reference), plus its `claude…` prefixes below."""

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of `value` against `schema`, a small JSON Schema subset: type, required, properties,
    additionalProperties, items, minItems, minLength, pattern, enum, anyOf."""
    if "anyOf" in schema:
        if all(schema_errors(value, option, where) for option in schema["anyOf"]):
            return [f"{where}: matches none of the allowed forms"]
        return []
    kind = schema.get("type")
    if kind and not isinstance(value, _TYPES[kind]):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: empty")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: needs at least {schema['minItems']} item(s)")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unknown field {key!r} (a typo Claude Code would ignore)")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{key}")
    return errors


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def frontmatter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a SKILL.md, for the plain forms we write: `key: scalar` and
    `key:` followed by `  - item` lines. Anything else fails the test (keep the header simple)."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path}: no front matter"
    header = text[4 : text.index("\n---\n", 4)]
    data: dict[str, Any] = {}
    key = None
    for line in header.splitlines():
        if line.startswith("  - "):
            assert key is not None and isinstance(data[key], list), f"{path}: list item outside a list: {line}"
            data[key].append(line[4:])
            continue
        name, sep, value = line.partition(":")
        assert sep and re.fullmatch(r"[a-z][a-z-]*", name), f"{path}: not a `key: value` line: {line!r}"
        value = value.strip()
        assert ": " not in value, f"{path}: {name}: an unquoted ': ' is not valid YAML"
        assert value[:1] not in set("[]{}&*!|>'\"%@`#"), f"{path}: {name}: value starts with a YAML indicator"
        key = name
        data[name] = [] if value == "" else {"true": True, "false": False}.get(value, value)
    return data


# --- the manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "schema"), [(PLUGIN_JSON, PLUGIN_SCHEMA), (MARKETPLACE_JSON, MARKETPLACE_SCHEMA), (MCP_JSON, MCP_SCHEMA)]
)
def test_each_manifest_has_the_shape_claude_code_reads(path, schema):
    assert schema_errors(load(path), schema) == []


def test_the_schema_check_catches_mistakes():
    broken = {**load(PLUGIN_JSON), "name": "iMessage Channel", "mcpServer": "./.mcp.json"}
    broken["channels"] = [{"server": "", "display": "x"}]
    errors = schema_errors(broken, PLUGIN_SCHEMA)
    assert any("$.name" in e for e in errors)
    assert any("unknown field 'mcpServer'" in e for e in errors)
    assert any("$.channels[0].server: empty" in e for e in errors)
    assert any("unknown field 'display'" in e for e in errors)


def test_names_agree_everywhere():
    # The plugin is `imessage`, like the official one, so its skills are /imessage:access and
    # /imessage:configure and the channel is plugin:imessage@<marketplace>: installing ours instead of the
    # official plugin changes nothing in what people type. The package and the marketplace keep our name.
    plugin, market = load(PLUGIN_JSON), load(MARKETPLACE_JSON)
    assert plugin["name"] == "imessage" and PYPROJECT["project"]["name"] == market["name"] == "imessage-channel"
    assert [p["name"] for p in market["plugins"]] == [plugin["name"]]
    assert market["name"] not in RESERVED_MARKETPLACE_NAMES and not market["name"].startswith("claude")


@pytest.mark.parametrize("skill", ["access", "configure"])
def test_skills_are_invoked_as_claude_code_derives_their_names(skill):
    # Claude Code names a plugin skill `<plugin name>:<skill folder>` (the SKILL.md `name` must agree).
    front = frontmatter(SKILLS / skill / "SKILL.md")
    assert f"{load(PLUGIN_JSON)['name']}:{skill}" == f"imessage:{front['name']}" == f"imessage:{skill}"
    text = (SKILLS / skill / "SKILL.md").read_text(encoding="utf-8")
    assert f"# /imessage:{skill}" in text and "/imessage-channel:" not in text


def test_docs_use_the_drop_in_names():
    for doc in (ROOT / "README.md", ROOT / "docs" / "plugin.md"):
        text = doc.read_text(encoding="utf-8")
        assert "/imessage-channel:" not in text and "imessage-channel@imessage-channel" not in text, doc
        assert "plugin:imessage@imessage-channel" in text, doc


def test_versions_agree_with_pyproject():
    version = PYPROJECT["project"]["version"]
    assert load(PLUGIN_JSON)["version"] == version == imessage_channel.__version__
    assert {p.get("version", version) for p in load(MARKETPLACE_JSON)["plugins"]} == {version}


def test_referenced_paths_exist():
    plugin = load(PLUGIN_JSON)
    assert (ROOT / plugin["mcpServers"]).resolve() == MCP_JSON
    [entry] = load(MARKETPLACE_JSON)["plugins"]
    plugin_root = (ROOT / entry["source"]).resolve()
    assert plugin_root == ROOT and (plugin_root / ".claude-plugin" / "plugin.json").is_file()
    assert sorted(p.name for p in SKILLS.iterdir()) == ["access", "configure"]


def test_the_channel_binds_the_server_that_mcp_json_declares():
    servers = load(MCP_JSON)["mcpServers"]
    assert [c["server"] for c in load(PLUGIN_JSON)["channels"]] == list(servers) == ["imessage"]


def test_the_server_command_is_quiet_and_runs_from_the_plugin_root():
    server = load(MCP_JSON)["mcpServers"]["imessage"]
    args = server["args"]
    assert server["command"] == "uv" and args[0] == "run"
    assert args[args.index("--directory") + 1] == "${CLAUDE_PLUGIN_ROOT}"
    assert "--quiet" in args  # uv's progress goes to stderr anyway; --quiet keeps even that short
    assert "--no-default-groups" in args  # the test tools are not installed into the plugin's environment
    assert args[-2:] == ["imessage-channel", "serve"]
    assert PYPROJECT["project"]["scripts"]["imessage-channel"] == "imessage_channel.cli:main"


# --- the skills ------------------------------------------------------------------------------------

PLACEHOLDERS = {
    "<code>": "a4f91c",
    "<handle>": "+15551234567",
    "<guid>": "iMessage;+;chat123",
    "<command>": "doctor",
    "<session>": "work",
}


@pytest.mark.parametrize("name", ["access", "configure"])
def test_skill_front_matter(name):
    meta = frontmatter(SKILLS / name / "SKILL.md")
    assert meta["name"] == name
    assert len(meta["description"]) >= 40
    assert meta["user-invocable"] is True
    assert meta["allowed-tools"] and all(
        re.fullmatch(r"Bash\(imessage-channel .+\)|Bash\(uv run .+\)", t) for t in meta["allowed-tools"]
    )
    # pre-approved commands only read: every change is shown to the user before it runs
    assert all(t.endswith(("access)", "access --json)", "doctor)")) for t in meta["allowed-tools"])


@pytest.mark.parametrize("name", ["access", "configure"])
def test_every_command_a_skill_shows_is_one_the_cli_accepts(name):
    text = (SKILLS / name / "SKILL.md").read_text(encoding="utf-8")
    commands = [c for c in re.findall(r"`(imessage-channel [^`]*)`", text) if "…" not in c]
    assert len(commands) >= 3
    parser = build_parser()
    for command in commands:
        for placeholder, sample in PLACEHOLDERS.items():
            command = command.replace(placeholder, sample)
        argv = shlex.split(command)[1:]
        parser.parse_args(argv)  # SystemExit here means the skill shows a command the CLI refuses


@pytest.mark.parametrize("name", ["access", "configure"])
def test_skills_refuse_requests_that_came_through_a_channel(name):
    text = (SKILLS / name / "SKILL.md").read_text(encoding="utf-8").lower()
    assert "channel event" in text and "refuse" in text
    assert "typed" in text and "terminal" in text
    assert "access.json` by hand" in text or "state files by hand" in text


def test_the_access_skill_covers_every_verb_of_the_official_skill():
    text = (SKILLS / "access" / "SKILL.md").read_text(encoding="utf-8")
    for verb in ("pair <code>", "deny <code>", "allow <handle>", "remove <handle>", "policy ", "group add <guid>"):
        assert f"imessage-channel access {verb}" in text
    assert "group rm <guid>" in text
    for key in ("textChunkLimit", "chunkMode", "mentionPatterns", "appendSignature"):
        assert f"access set {key}" in text
    assert "Never choose one yourself" in text


# --- running the server the way Claude Code does ---------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tests", "version": "0"}},
}


def _pump(stream, out: queue.Queue[bytes | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def run_mcp_json_command(env: dict[str, str], timeout: float) -> tuple[list[bytes], str, int]:
    """Start `.mcp.json`'s server command with `${CLAUDE_PLUGIN_ROOT}` = this checkout, send
    `initialize`, wait for its answer, close stdin; return (every stdout line, stderr, exit status)."""
    server = load(MCP_JSON)["mcpServers"]["imessage"]
    argv = [server["command"], *(a.replace("${CLAUDE_PLUGIN_ROOT}", str(ROOT)) for a in server["args"])]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    errors: list[bytes] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()  # type: ignore[union-attr]
    seen: list[bytes] = []
    try:
        proc.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
        proc.stdin.flush()
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                break
            seen.append(line)
            if b'"id":1' in line.replace(b" ", b""):
                break
        proc.stdin.close()
        while (line := lines.get(timeout=timeout)) is not None:
            seen.append(line)
        status = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen, b"".join(errors).decode("utf-8", "replace"), status


def assert_only_json_rpc_with_a_channel(lines: list[bytes], stderr: str) -> None:
    assert lines, f"no output; stderr:\n{stderr[-2000:]}"
    messages = []
    for line in lines:
        msg = json.loads(line)  # anything else on stdout fails here
        assert msg.get("jsonrpc") == "2.0", line
        messages.append(msg)
    [reply] = [m for m in messages if m.get("id") == 1]
    result = reply["result"]
    assert result["serverInfo"]["name"] == "imessage"
    assert set(result["capabilities"]["experimental"]) >= {"claude/channel", "claude/channel/permission"}


@pytest.fixture
def server_env(chatdb_factory, tmp_path) -> dict[str, str]:
    path, sim = chatdb_factory("sonoma")
    sim.text_self("hello")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    return {
        **env,
        "IMESSAGE_DB_PATH": str(path),
        "IMESSAGE_STATE_DIR": str(tmp_path / "state"),
        "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
        "UV_OFFLINE": "1",  # tests use no network: everything comes from uv's cache
    }


needs_uv = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")


@needs_uv
def test_the_mcp_json_command_speaks_only_json_rpc_on_stdout(server_env):
    lines, stderr, status = run_mcp_json_command(server_env, timeout=60)
    assert_only_json_rpc_with_a_channel(lines, stderr)
    assert status == 0, stderr


@needs_uv
def test_a_first_run_that_creates_the_environment_still_speaks_only_json_rpc(server_env, tmp_path):
    venv = tmp_path / "fresh-venv"
    env = {**server_env, "UV_PROJECT_ENVIRONMENT": str(venv)}
    lines, stderr, status = run_mcp_json_command(env, timeout=180)
    if not lines and ("cache" in stderr or "offline" in stderr.lower() or "connectivity" in stderr):
        pytest.skip(f"uv's cache cannot build the environment offline: {stderr.strip()[-300:]}")
    assert (venv / "pyvenv.cfg").is_file()  # this run really created and filled the environment
    assert_only_json_rpc_with_a_channel(lines, stderr)
    assert status == 0, stderr
