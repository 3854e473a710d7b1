"""The group's membership: which replicas may write, agreed through the causal history.

Causal stability (:mod:`crdt_ops.stability`) may drop metadata of an operation
only once no operation still to come can be concurrent with it. Operations come
only from writers, so every replica must know every writer before it counts an
operation stable: without an agreed membership a replica that was never heard
of may hold a concurrent operation (the limit every paper on stability states:
Baquero, Almeida, Shoker, "Making operation-based CRDTs operation-based",
DAIS 2014, assume a known set of replicas). The rule kept here:

* **Founders.** A *managed* replica is built with the founders of its group
  (``Replica(id, members=[...])``, the same list at every replica, possibly
  empty). Founders are members from the start. Over RabbitMQ the group has one
  founder, the first replica to claim it on the broker; it founds the group
  with its own admission as its first operation.
* **Admission.** Any other replica must be *admitted* before it writes: a
  member issues an ``Admit`` operation naming it (members do so on receiving its
  join request), and the newcomer's operations are valid only when an admission
  of it is in their causal past. Every replica checks this from the causal past
  alone, so all refuse the same operations (``not-a-member``). A new member's
  operations all follow its admission, so an operation that was stable among
  the members before it cannot be concurrent with any of them.
* **Retirement.** A retirement names the replica's last operation (its final sequence
  number) on each of its channels (:mod:`crdt_ops.subgroups`; without sub-groups, its
  one channel is its id). The retiring replica keeps counting until those operations and
  all before them are delivered here (on the channels held here), and every other member
  that holds such a channel has told that it knows of the retirement (its heartbeats
  relay the retirements it knows, each with the most it delivered of the retiree on the
  channels it holds: a worker holding one sub-group and the common part is waited for on
  those); then it is out for good: it is never admitted again and must never write
  again. A member that delivered more of the retiree than the retirement named (an
  operator names the last operation the group's stream holds, and the stream may have
  lost one that queues delivered) raises the last it names, by its reports and relays,
  before the others count the retiree out: else one replica would count it out and
  compact what another then resolved against its late operation, and they would diverge.

A replica built without ``members`` (the default) is *open*: anyone writes, no
membership is agreed, and nothing is ever stable, so nothing is compacted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from crdt_ops.clock import Clock, Dot
from crdt_ops.subgroups import channels_of, split


class Membership:
    """Founders, admissions and retirements as one replica has delivered them.

    ``view`` grows by one whenever the set of members changes, so a computation
    made over one set of members can tell it is stale.
    """

    def __init__(self, founders: Iterable[str] | None = None) -> None:
        """Raises TypeError when ``founders`` is a str or bytes (it would be read as one
        id per character: pass a list) or holds anything but strs."""
        if isinstance(founders, (str, bytes)):
            raise TypeError(f"members must be a collection of replica ids, such as "
                            f"[{founders!r}], not the {type(founders).__name__} {founders!r}")
        #: False: an open group (no agreed membership, nothing ever stable).
        self.managed = founders is not None
        self.founders = frozenset(founders or ())
        odd = [f for f in self.founders if not isinstance(f, str)]
        if odd:
            raise TypeError(f"members must be replica ids (str), not {odd[0]!r}")
        #: per admitted replica, the admissions delivered: admitter -> its seq
        self.admissions: dict[str, Clock] = {}
        #: per channel of a retiring replica (its id without sub-groups), the channel's last
        #: operation's seq, until all of them are delivered here
        self.retiring: Clock = {}
        self.retired: set[str] = set()
        self.view = 0

    def is_member(self, replica: str) -> bool:
        return (replica in self.founders or replica in self.admissions) \
            and replica not in self.retired

    def members(self) -> set[str]:
        """The members, retiring ones included until their last operations are delivered."""
        return (set(self.founders) | set(self.admissions)) - self.retired

    def may_write(self, origin: str, seen: Mapping[str, int], founding: bool) -> bool:
        """Whether operations of ``origin`` whose causal past is ``seen`` are valid:
        it is a founder, an admission of it is in ``seen``, or the operations begin
        with its own admission as its first operation (``founding``)."""
        if not self.managed or origin in self.founders or founding:
            return True
        by = self.admissions.get(origin)
        return by is not None and any(seen.get(a, 0) >= s for a, s in by.items())

    def admit(self, replica: str, by: Dot) -> bool:
        """Record the admission ``by`` (a dot) of ``replica``; True if it is a new member.
        The admission of a retired replica is recorded too (it is no member again): its
        operations before its retirement are valid by it, here as where the admission
        was delivered before the retirement."""
        new = not self.is_member(replica) and replica not in self.retired
        seqs = self.admissions.setdefault(replica, {})
        if by[1] < seqs.get(by[0], by[1] + 1):
            seqs[by[0]] = by[1]
        if new:
            self.view += 1
        return new

    def retiring_replicas(self) -> set[str]:
        """The replicas retiring (their last operations not all delivered here)."""
        return {split(c)[0] for c in self.retiring}

    def is_retiring(self, replica: str) -> bool:
        """Whether ``replica`` is retiring (:meth:`retiring_replicas`, without building it:
        asked of every local operation)."""
        return any(split(c)[0] == replica for c in self.retiring)

    def tells(self, channel: str, last_seq: int) -> bool:
        """Whether a retirement naming ``last_seq`` as the last operation of ``channel``
        is news here (its replica is not retired, nor the channel retiring after that
        operation or a later one)."""
        return split(channel)[0] not in self.retired and last_seq > self.retiring.get(channel, -1)

    def retire(self, replica: str, lasts: Mapping[str, int]) -> None:
        """``replica`` leaves for good after its operation ``lasts[c]`` on each of its
        channels ``c`` (its id alone, with 0, when it wrote nothing)."""
        for c, last in (channels_of(lasts, replica) or {replica: 0}).items():
            if self.tells(c, last):
                self.retiring[c] = last

    def raise_last(self, channel: str, seq: int) -> None:
        """A member delivered operation ``seq`` of ``channel``: if its replica is retiring
        after an earlier one, it retires after this one (see the module docstring)."""
        if self.retiring.get(channel, seq) < seq:
            self.retiring[channel] = seq

    def settle(self, delivered: Mapping[str, int],
               told: Callable[[str], bool] = lambda channel: True) -> list[str]:
        """Retire for good every retiring replica whose operations up to its last on
        each channel are in ``delivered`` (this replica's clock) and whose every channel
        the others ``told`` of; returns them."""
        done = [c for c, last in self.retiring.items()
                if delivered.get(c, 0) >= last and told(c)]
        if not done:
            return []
        for c in done:
            del self.retiring[c]
        left = self.retiring_replicas()
        out = sorted({split(c)[0] for c in done} - left)
        for r in out:
            self.retired.add(r)
            self.view += 1
        return out

    def load(self, founders: Iterable[str], admissions: Mapping[str, Clock],
             retiring: Mapping[str, int], retired: Iterable[str], managed: bool) -> None:
        """Take the state of a snapshot (see :meth:`Replica.snapshot`)."""
        self.managed = managed
        self.founders = frozenset(founders)
        self.admissions = {r: dict(by) for r, by in admissions.items()}
        self.retiring = dict(retiring)
        self.retired = set(retired)
        self.view += 1


__all__ = ["Membership"]
