"""Exceptions -> gRPC status, in one place (and recoverable details readable by Nomad)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import status_pb2

from xen_driver.driver.errors import (
    ConfigError,
    HostUnavailable,
    NotSupported,
    RecoverableError,
    TaskAlreadyExists,
    TaskNotFound,
)
from xen_driver.nomad.cty import CtyDecodeError
from xen_driver.nomad.status import STATUS_DETAILS_KEY, recoverable_from_metadata, status_for

C = grpc.StatusCode


@pytest.mark.parametrize(
    "exc,method,code,message,recoverable",
    [
        (TaskNotFound("a/b/c"), "WaitTask", C.NOT_FOUND, "task not found for given id", None),
        (
            ConfigError("task config", "vcpus", -1, "must be an integer between 1 and 128"),
            "StartTask",
            C.INVALID_ARGUMENT,
            'task config "vcpus": got -1, must be an integer between 1 and 128',
            None,
        ),
        (CtyDecodeError("expected a number"), "SetConfig", C.INVALID_ARGUMENT, "expected a number", None),
        (TaskAlreadyExists("x"), "StartTask", C.ALREADY_EXISTS, "task with id 'x' already started", None),
        (RecoverableError("xl busy"), "StartTask", C.FAILED_PRECONDITION, "xl busy", True),
        (RecoverableError("bad kernel", recoverable=False), "StartTask", C.FAILED_PRECONDITION, "bad kernel", False),
        (HostUnavailable("xenstored down"), "StartTask", C.FAILED_PRECONDITION, "xenstored down", True),
        (NotSupported("StartTask"), "StartTask", C.UNIMPLEMENTED, "StartTask: not implemented by the xen driver", None),
        (
            NotSupported("TaskStats"),
            "TaskStats",
            C.FAILED_PRECONDITION,
            "TaskStats: not implemented by the xen driver",
            False,
        ),
        (KeyError("x"), "InspectTask", C.INTERNAL, "KeyError: 'x'", None),
    ],
)
def test_mapping(exc, method, code, message, recoverable):
    info = status_for(exc, method)
    assert (info.code, info.message, info.recoverable) == (code, message, recoverable)
    meta = info.trailing_metadata()
    assert recoverable_from_metadata(meta) == recoverable
    if recoverable is not None:
        ((key, raw),) = meta
        rich = status_pb2.Status.FromString(raw)
        # The rich status must repeat the plain one; Nomad reads details[0].
        assert key == STATUS_DETAILS_KEY and rich.code == code.value[0] and rich.message == message
        assert rich.details[0].type_url.endswith("hashicorp.nomad.plugins.shared.structs.RecoverableError")
    assert info.unexpected == (code == C.INTERNAL)
