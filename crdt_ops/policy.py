"""Who may write what: principals, write rules, and the check every replica runs.

A **principal** is a dot-separated name such as ``web`` or ``worker.node-1``. A
replica id *belongs* to a principal when it equals it or extends it by a dot
(``worker.node-1`` and ``worker.node-1.host-3f2a`` belong to ``worker.node-1``;
``worker.node-10`` does not). Over RabbitMQ the principal is the broker user
that published a message (see the transport's ``auth`` setting); the same rule
ties operations to users.

A :class:`WritePolicy` is a list of :class:`Rule`: the first rule whose path
pattern matches an operation's target path decides who may write it; a path no
rule matches is open to everyone. Patterns are per path segment: ``*`` matches
anything within a segment, ``{name}`` captures a segment part (no dots or
slashes) that the writer pattern must capture equally; a name captured twice on
the path matches only equal parts. So
``Rule(("containers/*", "workers", "{node}"), writers=("worker.{node}",))`` lets
only the replicas of principal ``worker.n1`` write under ``workers/n1`` of any
container, and ``Rule(("placed/{node}/*", "workers", "{node}"), ...)`` matches
``placed/n1/c7/workers/n1`` but not ``placed/n1/c7/workers/n2``.

Guarantee: the decision depends only on the operation (its origin and target
path), never on state or arrival order, so every replica accepts or rejects
the same operations and replicas that apply the same policy converge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from crdt_ops.errors import Forbidden

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def belongs(replica_id: str, principal: str) -> bool:
    """Whether ``replica_id`` is ``principal`` or extends it by a dot."""
    return replica_id == principal or replica_id.startswith(principal + ".")


def _compile(pattern: str, *, prefix: bool) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _CAPTURE.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]).replace(r"\*", ".*"))
        out.append(f"(?P<{m.group(1)}>[^./]+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]).replace(r"\*", ".*"))
    return re.compile("".join(out) + (r"(?:\..*)?" if prefix else ""), re.DOTALL)


@dataclass(frozen=True)
class Rule:
    """Paths starting with ``path`` (segment patterns) may be written only by
    replicas belonging to one of ``writers`` (principal patterns); no writers:
    nobody may write them."""

    path: tuple[str, ...]
    writers: tuple[str, ...]
    _path: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _writers: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_path", tuple(_compile(p, prefix=False) for p in self.path))
        object.__setattr__(self, "_writers",
                           tuple(_compile(w, prefix=True) for w in self.writers))

    def match(self, target: Sequence[str]) -> dict[str, str] | None:
        """The captures if ``target`` starts with this rule's path (a name captured in
        two segments capturing the same part), else None."""
        if len(target) < len(self._path):
            return None
        captures: dict[str, str] = {}
        for pattern, segment in zip(self._path, target, strict=False):
            m = pattern.fullmatch(segment)
            if m is None:
                return None
            for name, part in m.groupdict().items():
                if captures.setdefault(name, part) != part:
                    return None
        return captures

    def allows(self, origin: str, captures: dict[str, str]) -> bool:
        """Whether ``origin`` belongs to one of the writers, given the captures of
        :meth:`match` (a writer's ``{name}`` must equal the path's)."""
        for writer in self._writers:
            m = writer.fullmatch(origin)
            if m is not None and all(captures.get(k) == v for k, v in m.groupdict().items()):
                return True
        return False


class WritePolicy:
    """An ordered list of rules; the first matching rule decides (see the module)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def check(self, origin: str, target: Sequence[str]) -> None:
        """Raise :class:`Forbidden` unless ``origin`` may write ``target`` (the path
        of the object written, ending with the field for a map remove)."""
        for rule in self.rules:
            captures = rule.match(target)
            if captures is not None:
                if not rule.allows(origin, captures):
                    raise Forbidden(f"replica {origin!r} may not write {'/'.join(target)!r} "
                                    f"(writers: {', '.join(rule.writers) or 'nobody'})")
                return


#: The policy that allows everything (a replica without a policy).
OPEN = WritePolicy(())
