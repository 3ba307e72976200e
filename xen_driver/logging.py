"""Structured logging in the one-line JSON shape go-plugin (inside the Nomad agent) understands.

go-plugin reads the plugin's stderr line by line. A line that is a JSON object with *string*
``@message``, ``@level`` and ``@timestamp`` keys is re-logged by the agent at that level with the
other keys as key/value pairs; anything else lands at DEBUG, i.e. invisible at the default level.
A non-string value under one of those three keys panics the agent's reader goroutine and kills the
whole agent, so the renderer here always produces strings for them.

Levels are go-hclog's five: trace, debug, info, warn, error. Timestamps are UTC with exactly six
fractional digits. Records stay on one physical line below go-plugin's 64 KiB read buffer.

Once the agent is gone nobody reads stderr and every write fails with EPIPE; writes are guarded
so a logging call never raises into the code that made it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging as _stdlib_logging
import os
import sys
import threading
import traceback
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

LEVELS = ("trace", "debug", "info", "warn", "error")
_RANK = {name: i for i, name in enumerate(LEVELS)}

# structlog method names -> go-hclog level names
_METHOD_LEVEL = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "msg": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "exception": "error",
    "critical": "error",
    "fatal": "error",
}

#: Lines longer than this are shrunk (go-plugin splits lines at 64 KiB and logs the pieces raw).
MAX_LINE = 60_000
LEVEL_ENV = "NOMAD_DRIVER_XEN_LOG_LEVEL"


def go_level(method_name: str) -> str:
    """The go-hclog level for a structlog method name (unknown names count as info)."""
    return _METHOD_LEVEL.get(method_name.lower(), "info")


def timestamp(now: _dt.datetime | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (hclog's JSON time layout)."""
    now = now or _dt.datetime.now(_dt.UTC)
    if now.tzinfo is not None:
        now = now.astimezone(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class GuardedLineWriter:
    """Writes one rendered record per line to a stream; swallows EPIPE and friends.

    After the first broken-pipe error the stream is considered gone and further records are
    dropped (or appended to ``fallback_path`` when one is given).
    """

    def __init__(self, stream: TextIO | None = None, fallback_path: str | None = None) -> None:
        self._stream = stream
        self._fallback_path = fallback_path
        self._broken = False
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO | None:
        """The stream lines go to; None when the process was started without a stderr."""
        return self._stream if self._stream is not None else sys.__stderr__

    @property
    def broken(self) -> bool:
        return self._broken

    def msg(self, line: str) -> None:
        with self._lock:
            if not self._broken:
                try:
                    stream = self.stream
                    if stream is None:
                        raise ValueError("no stderr")  # handled like a closed file: the fallback takes over
                    stream.write(line + "\n")
                    stream.flush()
                    return
                except (BrokenPipeError, ConnectionResetError):
                    self._broken = True
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EIO):
                        return
                    self._broken = True
                except ValueError:  # closed file
                    self._broken = True
            if self._fallback_path:
                try:
                    with open(self._fallback_path, "a", encoding="utf-8") as f:
                        f.write(line + "\n")
                except OSError:
                    pass

    # structlog calls the method named like the log call on the wrapped logger.
    trace = debug = info = warn = warning = error = err = exception = critical = fatal = msg


class GuardedLoggerFactory:
    def __init__(self, writer: GuardedLineWriter) -> None:
        self.writer = writer

    def __call__(self, *args: Any) -> GuardedLineWriter:
        return self.writer


class XenBoundLogger(structlog.BoundLoggerBase):
    """A bound logger with go-hclog's level names (including ``trace``)."""

    def trace(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._proxy_to_logger("trace", event, *args, **kw)

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._proxy_to_logger("debug", event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._proxy_to_logger("info", event, *args, **kw)

    def warn(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._proxy_to_logger("warn", event, *args, **kw)

    warning = warn

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._proxy_to_logger("error", event, *args, **kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("error", event, *args, **kw)


class _LevelFilter:
    def __init__(self, min_level: str) -> None:
        self.min_rank = _RANK[min_level]

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if _RANK[go_level(method_name)] < self.min_rank:
            raise structlog.DropEvent
        return event_dict


def _format_exception(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info and exc_info[0] is not None:
            event_dict["traceback"] = "".join(traceback.format_exception(*exc_info)).rstrip()
    return event_dict


def _shrink(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...[{len(value) - limit} chars cut]"
    if isinstance(value, dict):
        return {k: _shrink(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shrink(v, limit) for v in value]
    return value


def render_record(method_name: str, event_dict: EventDict) -> str:
    """Turn a structlog event dict into one go-plugin JSON line (pure; used by tests too)."""
    record: dict[str, Any] = {}
    record["@level"] = go_level(method_name)
    record["@message"] = str(event_dict.pop("event", ""))
    ts = event_dict.pop("timestamp", None)
    record["@timestamp"] = ts if isinstance(ts, str) else timestamp()
    module = event_dict.pop("logger_name", None)
    if module is not None:
        record["@module"] = str(module)
    for key, value in event_dict.items():
        key = str(key)
        if key.startswith("@"):
            key = "_" + key  # never let a caller shadow (or break) the special keys
        record[key] = value
    line = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False)
    limit = 8192
    while len(line.encode("utf-8")) > MAX_LINE and limit >= 64:
        line = json.dumps(_shrink(record, limit), default=str, separators=(",", ":"), ensure_ascii=False)
        limit //= 4
    return line


def _render(logger: Any, method_name: str, event_dict: EventDict) -> str:
    return render_record(method_name, event_dict)


class _StdlibBridge(_stdlib_logging.Handler):
    """Routes stdlib ``logging`` records (grpc, asyncio) into our JSON stream."""

    _MAP = {
        _stdlib_logging.DEBUG: "debug",
        _stdlib_logging.INFO: "info",
        _stdlib_logging.WARNING: "warn",
        _stdlib_logging.ERROR: "error",
        _stdlib_logging.CRITICAL: "error",
    }

    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        try:
            level = self._MAP.get(record.levelno) or ("trace" if record.levelno < 10 else "info")
            kw: dict[str, Any] = {"logger_name": record.name}
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            getattr(get_logger(), level)(record.getMessage(), **kw)
        except Exception:  # pragma: no cover - never raise from logging
            pass


_writer: GuardedLineWriter | None = None


def configure(
    level: str | None = None,
    stream: TextIO | None = None,
    fallback_path: str | None = None,
    install_hooks: bool = True,
) -> GuardedLineWriter:
    """Configure structlog for the plugin process; returns the writer (tests swap its stream)."""
    global _writer
    level = (level or os.environ.get(LEVEL_ENV) or "debug").lower()
    level = {"warning": "warn", "critical": "error"}.get(level, level)
    if level not in _RANK:
        level = "debug"
    _writer = GuardedLineWriter(stream, fallback_path)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _LevelFilter(level),
            _format_exception,
            _render,
        ],
        wrapper_class=XenBoundLogger,
        logger_factory=GuardedLoggerFactory(_writer),
        cache_logger_on_first_use=False,
    )
    root = _stdlib_logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(_stdlib_logging.WARNING if _RANK[level] > _RANK["debug"] else _stdlib_logging.INFO)
    if install_hooks:
        install_excepthooks()
    return _writer


def get_logger(name: str | None = None, **initial: Any) -> XenBoundLogger:
    if name is not None:
        initial["logger_name"] = name
    return structlog.get_logger(**initial)


def _excepthook(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        return
    get_logger().error(
        "uncaught exception",
        error=f"{exc_type.__name__}: {exc}",
        exc_info=(exc_type, exc, tb),
    )


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    get_logger().error(
        "uncaught exception in thread",
        thread=getattr(args.thread, "name", None),
        error=f"{args.exc_type.__name__}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def install_excepthooks() -> None:
    """Uncaught exceptions become one ``error`` record instead of a raw (DEBUG-level) traceback."""
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def asyncio_exception_handler(loop: Any, context: dict) -> None:
    exc = context.get("exception")
    kw: dict[str, Any] = {}
    if exc is not None:
        kw["error"] = f"{type(exc).__name__}: {exc}"
        kw["exc_info"] = exc
    get_logger().error(str(context.get("message") or "unhandled error in event loop"), **kw)
