#!/usr/bin/env python3
"""Write docs/api.md, the API reference, from the docstrings (stdlib only).

    python scripts/api-docs.py           # (re)write docs/api.md
    python scripts/api-docs.py --check   # exit 1, with a diff, if docs/api.md is stale

What is documented, and in which order, is :data:`SECTIONS`. A class's entry lists
its public methods, properties and the instance attributes documented with a ``#:``
comment in its source; members inherited from a crdt-ops base class are listed too.
reST roles (``:class:`~crdt_ops.errors.X```) become plain code spans.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

#: (title, module whose docstring introduces the section or "", objects: "module:Name").
SECTIONS: list[tuple[str, str, list[str]]] = [
    ("The package", "crdt_ops", []),
    ("Replica", "crdt_ops.replica", ["crdt_ops.replica:Replica"]),
    ("Handles and `.value`", "crdt_ops.handles", [
        "crdt_ops.handles:Handle", "crdt_ops.handles:Fields", "crdt_ops.handles:Target",
        "crdt_ops.handles:CounterHandle",
        "crdt_ops.handles:GCounterHandle", "crdt_ops.handles:RegisterHandle",
        "crdt_ops.handles:MVRegisterHandle", "crdt_ops.handles:SetHandle",
        "crdt_ops.handles:FlagHandle", "crdt_ops.handles:MapHandle"]),
    ("Values", "crdt_ops.values", ["crdt_ops.values:check_value"]),
    ("Change events", "crdt_ops.events", ["crdt_ops.events:ChangeEvent"]),
    ("Write policies", "crdt_ops.policy", [
        "crdt_ops.policy:WritePolicy", "crdt_ops.policy:Rule", "crdt_ops.policy:OPEN",
        "crdt_ops.policy:belongs"]),
    ("Errors", "crdt_ops.errors", [
        "crdt_ops.errors:CrdtError", "crdt_ops.errors:InvalidMessage",
        "crdt_ops.errors:TypeConflict", "crdt_ops.errors:InvalidValue",
        "crdt_ops.errors:BufferFull", "crdt_ops.errors:NotAMember",
        "crdt_ops.errors:OwnPastMissing", "crdt_ops.errors:Deposed",
        "crdt_ops.errors:Forbidden", "crdt_ops.errors:Unauthenticated",
        "crdt_ops.errors:WaitingCapReached",
        "crdt_ops.transport.store:StoreUnavailable", "crdt_ops.transport.store:StoreLocked"]),
    ("Nodes: a replica pumped by a transport", "crdt_ops.transport", [
        "crdt_ops.transport:Node"]),
    ("In memory", "crdt_ops.transport.memory", [
        "crdt_ops.transport.memory:MemoryBus", "crdt_ops.transport.memory:MemoryNode",
        "crdt_ops.transport.memory:MemoryNetwork"]),
    ("Over RabbitMQ", "crdt_ops.transport.amqp", ["crdt_ops.transport.amqp:AmqpNode"]),
    ("Several groups: routing by key", "crdt_ops.routing", [
        "crdt_ops.routing:Routing", "crdt_ops.routing:Groups", "crdt_ops.routing:NotHeld"]),
    ("Sub-groups: partial replication within a group", "crdt_ops.subgroups", [
        "crdt_ops.subgroups:SubGroups", "crdt_ops.subgroups:channel",
        "crdt_ops.subgroups:split", "crdt_ops.subgroups:channels_of",
        "crdt_ops.errors:SubgroupNotHeld"]),
    ("Several groups over any transport", "crdt_ops.transport.groups", [
        "crdt_ops.transport.groups:NodeGroups"]),
    ("Several groups over RabbitMQ", "crdt_ops.transport.amqp.groups", [
        "crdt_ops.transport.amqp.groups:AmqpGroups",
        "crdt_ops.transport.amqp.groups:store_for"]),
    ("Settings", "crdt_ops.transport.config", [
        "crdt_ops.transport.config:Settings", "crdt_ops.transport.config:from_args",
        "crdt_ops.transport.config:add_arguments", "crdt_ops.transport.config:load",
        "crdt_ops.transport.config:option"]),
]

HEADER = """# API reference

Generated from the docstrings by `scripts/api-docs.py`: do not edit here, edit the
docstrings and run `.venv/bin/python scripts/api-docs.py` (`tests/docs/test_docs.py` fails
when this file is stale). The README shows the library at work; `examples/embed.py` embeds
it in a service of one's own.
"""

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([\w.]+)`")


def _role(m: re.Match[str]) -> str:
    short, name = m.group(1), m.group(2)
    return "`" + (name.rsplit(".", 1)[-1] if short else name) + "`"


def markdown(doc: str) -> str:
    """A docstring as Markdown: roles and ``literals`` become code spans; a paragraph
    ending in ``::`` introduces an indented literal block, kept as a text block."""
    doc = _ROLE.sub(_role, doc)
    doc = re.sub(r"``(.+?)``", r"`\1`", doc, flags=re.DOTALL)
    out: list[str] = []
    lines = doc.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.endswith("::") and not line.endswith(" ::"):
            out.append(line[:-1])
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            out += ["", "```text", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


class _Shown:
    """Shows as the given text in a signature (defaults and annotations)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _default(value: Any, module: Any) -> str:
    if inspect.isroutine(value):
        return f"{value.__module__}.{getattr(value, '__qualname__', value.__name__)}"
    text = repr(value)
    if " at 0x" in text:  # an object without a stable repr: name it as its module does
        for name, held in vars(module).items():
            if held is value:
                return str(name)
        return f"<{type(value).__name__}>"
    return text


def signature(fn: Callable[..., Any], name: str, module: Any) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        p = p.replace(annotation=p.empty if p.annotation is p.empty else _Shown(
            p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(
                p.annotation)))
        if p.default is not p.empty:
            p = p.replace(default=_Shown(_default(p.default, module)))
        params.append(p)
    ret = sig.return_annotation
    shown = sig.replace(parameters=params, return_annotation=sig.empty if ret in (
        sig.empty, "None", None) else _Shown(ret if isinstance(ret, str) else
                                             inspect.formatannotation(ret)))
    return f"{name}{shown}"


def _attribute_docs(cls: type) -> dict[str, str]:
    """``#:`` comments before ``self.x = ...`` (or ``x: T = ...``) lines of the class."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return _comment_docs(source.split("\n"), r"(?:self\.)?(\w+)\s*(?::[^=]*)?=(?!=)")


def _comment_docs(lines: list[str], assignment: str) -> dict[str, str]:
    """Names assigned right after a ``#:`` comment, and in the assignments right after
    that one with the same value (``self.published = 0`` / ``self.refused = 0``)."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    doc, value = "", None
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = re.match(assignment, text)
        if pending and m:
            doc, value, pending = " ".join(pending), text[m.end():].strip(), []
        elif not (doc and m and text[m.end():].strip() == value):
            doc, pending = "", []
            continue
        if not m.group(1).startswith("_"):
            docs[m.group(1)] = doc
    return docs


def _public_base(cls: type) -> str:
    """The name of ``cls``, or of its first public ancestor if it is private."""
    for klass in cls.__mro__:
        if not klass.__name__.startswith("_"):
            return klass.__name__
    return "object"


def _members(cls: type) -> Iterator[tuple[str, Any, type]]:
    """Public members defined by ``cls`` or a crdt-ops base, own ones first, with the
    class that defines each."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("crdt_ops") or klass is Exception:
            continue
        for name, value in vars(klass).items():
            if name in seen or name.startswith("_") or name.isupper():
                continue
            seen.add(name)
            if isinstance(value, (property, staticmethod, classmethod)) or inspect.isfunction(
                    value):
                yield name, value, klass


def _dataclass_fields(cls: type) -> list[str]:
    """A table of a settings dataclass: field, flag, environment, default, and its
    ``--help`` text (crdt_ops.transport.config.option)."""
    from crdt_ops.transport.config import env_of, flag_of

    rows = ["| field | flag | environment | default | note |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        note = str(f.metadata.get("help", "")).replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{flag_of(f)}` | `{env_of(f)}` | `{f.default!r}` | "
                    f"{note} |")
    return rows


def document(ref: str) -> list[str]:
    module_name, name = ref.split(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    out: list[str] = []
    if inspect.isclass(obj):
        kind = "protocol" if getattr(obj, "_is_protocol", False) else (
            "exception" if issubclass(obj, BaseException) else "class")
        bases = [_public_base(b) for b in obj.__bases__
                 if b.__module__.startswith("crdt_ops") or issubclass(obj, BaseException)]
        bases = [b for b in bases if b != "object"]
        base = f"; a subclass of {', '.join(f'`{b}`' for b in bases)}" if bases else ""
        init = obj.__dict__.get("__init__")
        if dataclasses.is_dataclass(obj) or init is None or kind == "protocol":
            head = f"`{module_name}.{name}`"
        else:
            head = f"`{signature(init, f'{module_name}.{name}', module)}`"
        out += [f"### {name}", "", f"{kind} {head}{base}", ""]
        doc = inspect.getdoc(obj)
        if doc and doc != inspect.getdoc(obj.__mro__[1]):
            out += [markdown(doc), ""]
        if dataclasses.is_dataclass(obj) and name == "Settings":
            out += [*_dataclass_fields(obj), ""]
        elif dataclasses.is_dataclass(obj):
            fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(obj)
                               if not f.name.startswith("_"))
            out += [f"Fields: {fields}.", ""]
        attrs = _attribute_docs(obj)
        for attr, text in attrs.items():
            out += [f"- `{name}.{attr}` (attribute): {markdown(text)}"]
        if attrs:
            out.append("")
        for member, value, owner in _members(obj):
            if owner is not obj and f"{owner.__module__}:{owner.__name__}" in _documented():
                kind = "property" if isinstance(value, property) else "method"
                out += [f"- `{name}.{member}` ({kind}): as `{owner.__name__}.{member}`.", ""]
            else:
                out += _member(name, member, value, module)
    elif inspect.isroutine(obj):
        out += [f"### {name}", "", f"function `{signature(obj, f'{module_name}.{name}', module)}`",
                ""]
        doc = inspect.getdoc(obj)
        if doc:
            out += [markdown(doc), ""]
    else:
        docs = _module_attribute_docs(module)
        out += [f"### {name}", "", f"`{module_name}.{name}`: {docs.get(name, '')}".rstrip(), ""]
    return out


def _documented() -> set[str]:
    """Every ``module:Name`` this reference has an entry for."""
    return {ref for _, _, refs in SECTIONS for ref in refs}


def _module_attribute_docs(module: Any) -> dict[str, str]:
    lines = [line for line in inspect.getsource(module).split("\n")
             if not line.startswith((" ", "\t"))]
    return _comment_docs(lines, r"(\w+)\s*(?::[^=]*)?=(?!=)")


def _member(owner: str, name: str, value: Any, module: Any) -> list[str]:
    if isinstance(value, property):
        head = f"`{owner}.{name}` (property)"
        doc = inspect.getdoc(value)
    else:
        fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        prefix = "async " if inspect.iscoroutinefunction(fn) else ""
        prefix += "static " if isinstance(value, staticmethod) else ""
        prefix += "class method " if isinstance(value, classmethod) else ""
        head = f"{prefix}`{signature(fn, f'{owner}.{name}', module)}`"
        doc = inspect.getdoc(fn)
    text = markdown(doc) if doc else ""
    if not text:
        return [f"- {head}", ""]
    first, _, rest = text.partition("\n")
    lines = [f"- {head}: {first}"]
    lines += [f"  {line}" if line else "" for line in rest.split("\n")] if rest else []
    return [*lines, ""]


def render() -> str:
    out = [HEADER, "## Contents", ""]
    for title, _, _ in SECTIONS:
        anchor = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        out.append(f"- [{title}](#{anchor})")
    out.append("")
    for title, intro, refs in SECTIONS:
        out += [f"## {title}", ""]
        if intro:
            doc = inspect.getdoc(importlib.import_module(intro))
            out += [f"`{intro}`: {markdown(doc)}" if doc else f"`{intro}`", ""]
        for ref in refs:
            out += document(ref)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 with a diff when docs/api.md is not what the docstrings say")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    text = render()
    if args.check:
        old = OUT.read_text() if OUT.exists() else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), "docs/api.md (committed)",
                "docs/api.md (from the docstrings)"))
            print("docs/api.md is stale: run .venv/bin/python scripts/api-docs.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
