"""The one place where driver errors become gRPC statuses.

| raised                          | status              | message / details                           |
| ------------------------------- | ------------------- | ------------------------------------------- |
| TaskNotFound                    | NOT_FOUND           | "task not found for given id" (TaskStats:   |
|                                 |                     | + RecoverableError{false})                  |
| ConfigError, CtyDecodeError     | INVALID_ARGUMENT    | the error text (names field, given, accepted)|
| TaskAlreadyExists               | ALREADY_EXISTS      | error text                                  |
| RecoverableError                | FAILED_PRECONDITION | error text + RecoverableError{recoverable}  |
| NotSupported                    | UNIMPLEMENTED       | error text (TaskStats: see below)           |
| HostUnavailable                 | FAILED_PRECONDITION*| error text + RecoverableError{true}         |
| any other exception             | INTERNAL            | "<Type>: <text>", logged with traceback     |

Nomad reads status details only on StartTask and TaskStats. Two special cases follow from how
the client reacts (docs/PROTOCOL.md §5.3, §5.9):

* TaskStats retries any error forever with ERROR logs, except a non-recoverable
  RecoverableError, so "not supported" there becomes FAILED_PRECONDITION + recoverable=false.
* UNAVAILABLE is what Nomad takes for "the plugin process died"; a host problem is therefore
  sent as FAILED_PRECONDITION + recoverable=true (*), so the task's restart policy applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2

from xen_driver._proto.nomad import structs_pb2
from xen_driver.driver.errors import (
    ConfigError,
    HostUnavailable,
    NotSupported,
    RecoverableError,
    TaskAlreadyExists,
    TaskNotFound,
)
from xen_driver.nomad.cty import CtyDecodeError

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class StatusInfo:
    code: grpc.StatusCode
    message: str
    #: When not None, a RecoverableError detail with this flag is attached.
    recoverable: bool | None = None
    #: Unexpected failure (log it with its traceback).
    unexpected: bool = False

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        if self.recoverable is None:
            return ()
        detail = any_pb2.Any()
        detail.Pack(structs_pb2.RecoverableError(recoverable=self.recoverable))
        rich = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return ((STATUS_DETAILS_KEY, rich.SerializeToString()),)


def status_for(exc: BaseException, method: str = "") -> StatusInfo:
    """Map an exception raised while serving ``method`` to the status Nomad should see."""
    if isinstance(exc, TaskNotFound):
        # On TaskStats, a plain error makes Nomad retry forever; a task that is gone is final.
        return StatusInfo(
            grpc.StatusCode.NOT_FOUND, TaskNotFound.MESSAGE, recoverable=False if method == "TaskStats" else None
        )
    if isinstance(exc, (ConfigError, CtyDecodeError)):
        return StatusInfo(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, TaskAlreadyExists):
        return StatusInfo(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, RecoverableError):
        return StatusInfo(grpc.StatusCode.FAILED_PRECONDITION, str(exc), recoverable=exc.recoverable)
    if isinstance(exc, HostUnavailable):
        return StatusInfo(grpc.StatusCode.FAILED_PRECONDITION, str(exc), recoverable=True)
    if isinstance(exc, NotSupported):
        if method == "TaskStats":
            return StatusInfo(grpc.StatusCode.FAILED_PRECONDITION, str(exc), recoverable=False)
        return StatusInfo(grpc.StatusCode.UNIMPLEMENTED, str(exc))
    return StatusInfo(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", unexpected=True)


def recoverable_from_metadata(metadata) -> bool | None:
    """Read the RecoverableError flag back from trailing metadata (used by tests and tools)."""
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY:
            rich = status_pb2.Status.FromString(value)
            for detail in rich.details:
                marker = structs_pb2.RecoverableError()
                if detail.Unpack(marker):
                    return marker.recoverable
    return None
