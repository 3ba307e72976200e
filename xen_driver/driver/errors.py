"""Precise error types of the driver domain.

The Nomad layer maps each type to a gRPC status in one place
(``xen_driver.nomad.status``); code below it raises these and never thinks about gRPC.
"""

from __future__ import annotations

from typing import Any


class DriverError(Exception):
    """Base of every error the driver raises on purpose."""


class ConfigError(DriverError, ValueError):
    """A configuration value is not acceptable.

    The message names the field, what was given and what is accepted, e.g.
    ``task config "vcpus": got -1, must be an integer between 1 and 128``.
    """

    def __init__(self, scope: str, field: str, given: Any, accepted: str) -> None:
        self.scope = scope
        self.field = field
        self.given = given
        self.accepted = accepted
        super().__init__(f'{scope} "{field}": got {describe(given)}, {accepted}')


class TaskNotFound(DriverError, LookupError):
    """No task with this id is known to the driver."""

    # Same text as Nomad's own sentinel, so logs read the same as for in-tree drivers.
    MESSAGE = "task not found for given id"

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(self.MESSAGE)


class TaskAlreadyExists(DriverError):
    """StartTask for an id that is already running."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task with id {task_id!r} already started")


class RecoverableError(DriverError):
    """A failure Nomad may retry (``recoverable=True``) or must not retry."""

    def __init__(self, message: str, recoverable: bool = True) -> None:
        self.recoverable = recoverable
        super().__init__(message)


class NotSupported(DriverError):
    """The driver does not offer this operation (or not yet)."""

    def __init__(self, operation: str, reason: str = "not implemented by the xen driver") -> None:
        self.operation = operation
        super().__init__(f"{operation}: {reason}")


class HostUnavailable(DriverError):
    """The Xen host (hypervisor, xenstored, toolstack) does not answer."""


def describe(value: Any) -> str:
    """Render a given value the way a user wrote it (strings quoted, nothing as ``nothing``)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 80 else value[:77] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    return str(value)
