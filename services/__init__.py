"""The services of the project's origin story: web, logic and worker.

Each is a thin composition root: one replica of the group (RabbitMQ or the
in-memory network), the data model of :mod:`services.model`, and its own
reactions to change events. No service calls another.
"""
