"""Development tools of crdt-ops, kept out of the library and the services.

A top-level package of the source checkout (not installed from a wheel): benchmarks
(``python -m tools.bench``), in-memory simulations and random histories (``tools.sim``),
fault injection (``tools.chaos``), hostile input (``tools.fuzz``), a throwaway RabbitMQ
node (``tools.rabbitnode``) and replica processes driven by tests
(``tools.replica_process``). Several need root or Debian's rabbitmq-server. They may
import anything below them (the library, the services); nothing below imports them
(``crdt-ops chaos`` and the other tools are imported by name only when run:
:mod:`tools.commands`).
"""
