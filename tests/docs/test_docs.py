"""The documentation runs as written.

- Every ```python block of the docs (README.md, services/README.md, docs/*.md,
  examples/*.md) runs as a program of its own, in a fresh directory, and exits 0; a
  block followed by a ```text block introduced by "prints" must print exactly that.
  A block that uses RabbitMQ runs against the test broker (``CRDT_OPS_AMQP_URL``) in
  a group of its own (``CRDT_OPS_GROUP``), deleted afterwards.
- Every command line of a ```sh / ```bash / ```console block, and every inline code
  span that starts with ``crdt-ops ``, names a subcommand and flags that exist
  (``crdt-ops SUB --help``); ``scripts/...`` exists and is executable; ``python -m M``
  names an importable module. Every flag in the README's settings table exists.
- Every fenced block says what it is (python, sh, bash, console, text): a block that
  is deliberately not run is marked ```text.
- Relative links between the docs point at files that exist.
- docs/api.md is what ``scripts/api-docs.py`` makes of the docstrings now, and names
  everything ``crdt_ops`` and ``crdt_ops.handles`` export.
- examples/embed.py prints the same story over the in-memory network and over RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import crdt_ops
import crdt_ops.handles
from tools.harness import delete_group_async

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "services" / "README.md",
               *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.md")])
LANGUAGES = {"python", "sh", "bash", "console", "text"}
SHELL = {"sh", "bash", "console"}
TIMEOUT_S = 60


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    expected: str | None = None  # what a python block prints, when the doc says

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each python block with the output the
    doc shows for it: a ```text block right after it, introduced by "prints"."""
    lines = path.read_text().split("\n")
    out: list[Block] = []
    between: list[str] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            between.append(lines[i])
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        prose = " ".join(between).strip().lower()
        if (lang == "text" and out and out[-1].lang == "python"
                and (not prose or prose.startswith("prints"))):
            out[-1].expected = block.code
        out.append(block)
        between = []
    return out


ALL = [b for path in DOCS for b in blocks(path)]
PYTHON = [b for b in ALL if b.lang == "python"]


def test_the_docs_have_blocks() -> None:
    assert any(b.path.name == "README.md" and b.path.parent == ROOT for b in PYTHON)
    assert any(b.path == ROOT / "services" / "README.md" for b in PYTHON)


@pytest.mark.parametrize("block", ALL, ids=[b.where for b in ALL])
def test_every_block_says_what_it_is(block: Block) -> None:
    assert block.lang in LANGUAGES, (
        f"{block.where}: a ```{block.lang} block; use one of {sorted(LANGUAGES)} "
        "(```text for anything that is not run)")


# ---------------------------------------------------------------- python blocks

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_OPS_")}
    env["CRDT_OPS_LOG"] = "WARNING"
    env.update(extra)
    return env


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uses_broker = "AmqpNode" in block.code or "CRDT_OPS_AMQP_URL" in block.code
    extra: dict[str, str] = {}
    group = ""
    if uses_broker:
        url: str = request.getfixturevalue("amqp_url")
        group = f"docs-{uuid.uuid4().hex[:10]}"
        extra = {"CRDT_OPS_AMQP_URL": url, "CRDT_OPS_GROUP": group}
    script = tmp_path / "block.py"
    script.write_text(block.code)
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(**extra),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        if uses_broker:
            ids = re.findall(r"replica_id=\"([^\"]+)\"", block.code)
            asyncio.run(delete_group_async(extra["CRDT_OPS_AMQP_URL"], group, ids))
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
    if block.expected is not None:
        assert done.stdout == block.expected, (
            f"{block.where} printed\n{done.stdout}\nbut the doc says it prints\n{block.expected}")


# ---------------------------------------------------------------- commands

@cache
def cli_help(sub: str) -> str:
    """``crdt-ops SUB --help`` ("" for the top level), run in this process."""
    from services.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([sub, "--help"] if sub else ["--help"])
    return out.getvalue()


def subcommands() -> set[str]:
    m = re.search(r"\{([\w,-]+)\}", cli_help(""))
    assert m, cli_help("")
    return set(m.group(1).split(","))


def check_command(argv: list[str], where: str) -> None:
    """Raise AssertionError if ``argv`` names a command, subcommand or flag that does not
    exist; commands of other programs pass unchecked."""
    if not argv:
        return
    prog, args = argv[0], argv[1:]
    if prog == "crdt-ops":
        assert args and args[0] in subcommands(), (
            f"{where}: `crdt-ops {' '.join(args)}`: no such subcommand "
            f"(there are {sorted(subcommands())})")
        known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", cli_help(args[0])))
        for arg in args[1:]:
            flag = arg.split("=")[0].strip("[]")
            if flag.startswith("--"):
                assert flag in known, (f"{where}: `crdt-ops {args[0]}` has no flag {flag} "
                                       f"(it has {sorted(known)})")
    elif prog.startswith("scripts/"):
        script = ROOT / prog
        assert script.is_file() and os.access(script, os.X_OK), f"{where}: {prog} is missing"
    elif re.fullmatch(r"(\.venv/bin/)?python3?", prog) and args:
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
        elif not args[0].startswith("-"):
            assert (ROOT / args[0]).is_file(), f"{where}: no file {args[0]}"


def command_lines(block: Block) -> list[str]:
    lines = block.code.split("\n")
    if block.lang == "console":  # only the prompts are typed
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


SHELL_BLOCKS = [b for b in ALL if b.lang in SHELL]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.where for b in SHELL_BLOCKS])
def test_shell_block_names_real_commands(block: Block) -> None:
    for line in command_lines(block):
        check_command(shlex.split(line, comments=True), block.where)


def inline_commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        prose = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.S | re.M)
        for span in re.findall(r"`(crdt-ops [^`]+)`", prose):
            out.append((f"{path.relative_to(ROOT)}: `{span}`", span))
    return out


@pytest.mark.parametrize(("where", "span"), inline_commands(),
                         ids=[w for w, _ in inline_commands()])
def test_inline_command_names_real_flags(where: str, span: str) -> None:
    check_command(shlex.split(span), where)


def test_readme_settings_table_names_real_flags() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| flag | environment | default | meaning |"):]
    table = table[:table.index("\n\n")]
    flags = [f for row in table.split("\n")[2:] for f in re.findall(
        r"`(--[a-z0-9-]+)`", row.split("|")[1])]
    assert len(flags) > 15
    known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", cli_help("replica")))
    assert not set(flags) - known, f"README flags `crdt-ops replica` lacks: {set(flags) - known}"


def test_links_between_docs_resolve() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: {target}"


# ---------------------------------------------------------------- the API reference

def test_api_reference_is_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "api-docs.py"), "--check"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, (
        f"docs/api.md is stale: run .venv/bin/python scripts/api-docs.py\n{done.stdout[-4000:]}"
        f"{done.stderr}")


def test_api_reference_names_every_export() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    names = set(crdt_ops.__all__) | set(crdt_ops.handles.__all__) | {
        "AmqpNode", "MemoryNode", "Node", "Settings"}
    missing = {n for n in names if f"### {n}\n" not in text}
    assert not missing, f"docs/api.md has no entry for {sorted(missing)}"
    for node in ("Node", "AmqpNode", "MemoryNode"):
        for method in ("start", "stop", "write", "flush", "health"):
            assert f"`{node}.{method}(" in text, f"docs/api.md lacks {node}.{method}"
    for handle in ("CounterHandle", "GCounterHandle", "RegisterHandle", "MVRegisterHandle",
                   "SetHandle", "FlagHandle", "MapHandle"):
        assert f"`{handle}.value` (property)" in text, f"docs/api.md lacks {handle}.value"


# ---------------------------------------------------------------- examples/embed.py

EMBED_STORY = """\
admin: added sku-1 Widget at 2.50, sku-2 Gadget at 12.00
shop.north: received 10 x sku-1, 3 x sku-2; shop.south: received 5 x sku-1
shop.north: sold 8 x sku-1
shop.south: sold 2 x sku-1
shop.south: cannot sell 1 x sku-2: 0 in stock here
shop.south: Forbidden: forbidden: replica 'shop.south' may not write 'items/sku-1/price' \
(writers: admin)
converged: admin, shop.north, shop.south hold the same state
sku-1 Widget     2.50  stock 5 (north 2, south 3)
sku-2 Gadget    12.00  stock 3 (north 3)
admin was alerted: sku-1 low at north (2 left)
"""


def run_embed(tmp_path: Path, *args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "embed.py"), *args],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, f"examples/embed.py {args} failed:\n{done.stdout}{done.stderr}"
    first, _, rest = done.stdout.partition("\n")
    return first, rest


def test_embed_example_in_memory(tmp_path: Path) -> None:
    first, story = run_embed(tmp_path)
    assert first == "inventory over the in-memory network"
    assert story == EMBED_STORY


def test_embed_example_over_rabbitmq(tmp_path: Path, amqp_url: str) -> None:
    first, story = run_embed(tmp_path, "--amqp-url", amqp_url)
    assert first.startswith("inventory over RabbitMQ at "), first
    assert story == EMBED_STORY
    assert not list(tmp_path.iterdir()), "the example left files in the working directory"


def test_examples_and_scripts_type_check() -> None:
    """pyproject's mypy covers the packages; the example and the generator are typed too."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "examples/embed.py", "scripts/api-docs.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


#: Flags the docs name that belong to other tools than ``crdt-ops``.
OTHER_TOOLS_FLAGS = {
    "--apply": "python deploy/make_definitions.py",
    "--passwords": "python deploy/make_definitions.py",
    "--check": "python scripts/generate_proto.py, scripts/api-docs.py",
    "--quick": "python -m tools.bench",
    "--pg-dsn": "python -m tools.bench services",
    "--trace": "python -m tools.bench services, hop",
    "--x-y": "a placeholder: the flag of setting x_y",
}


def test_every_flag_the_docs_name_exists() -> None:
    """A flag in a code span anywhere in the docs is one of some ``crdt-ops`` command."""
    known = set(OTHER_TOOLS_FLAGS)
    for sub in subcommands():
        known |= set(re.findall(r"--[a-z0-9][a-z0-9-]*", cli_help(sub)))
    unknown = [f"{path.relative_to(ROOT)}: {flag}" for path in DOCS
               for flag in sorted(set(re.findall(r"`(--[a-z0-9][a-z0-9-]*)", path.read_text())))
               if flag not in known]
    assert not unknown, f"flags no crdt-ops command has: {unknown}"


def test_readme_names_the_real_default_store_file() -> None:
    from crdt_ops.transport.amqp import default_store_path
    from crdt_ops.transport.config import Settings

    row = next(line for line in (ROOT / "README.md").read_text().split("\n")
               if line.startswith("| `--store` |"))
    assert "`crdt-ops.<group>.<name>.sqlite`" in row, row
    assert default_store_path(Settings(group="G"), "NAME") == "crdt-ops.G.NAME.sqlite"
