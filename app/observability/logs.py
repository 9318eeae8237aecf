"""Logging, configured in one place for the API (uvicorn's loggers included) and the workers (Celery's).

Two formats (``FT_LOG_FORMAT``): ``json``, one object per line for a log pipeline, the default in production;
``text``, a line a person reads at a terminal, the default in the embedded mode. Every record carries the
request id while a request is served (``RequestIdMiddleware`` sets it) and the job id while a worker runs a
job (``JobRunner.run`` sets it), through context variables, so no call site has to pass them along::

    2026-11-28 09:14:03,512 INFO worker.runner [ftjob_01JDX…]: job ftjob_01JDX… is not claimable …
    {"time": "2026-11-28T09:14:03.512Z", "level": "INFO", "logger": "worker.runner", "message": "…",
     "pid": 4121, "job_id": "ftjob_01JDX…"}

This module imports only the standard library and python-json-logger (a few small modules): the CLI calls it
before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import pythonjsonlogger.core
import pythonjsonlogger.json

LogFormat = Literal["json", "text"]

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_CONTEXT = {"request_id": current_request_id, "job_id": current_job_id}

# The library's names for the fields, and the record attributes that are not ``extra=`` fields (the ids are
# added only when set).
_RENAMED = {"levelname": "level", "name": "logger", "process": "pid", "exc_info": "exception", "stack_info": "stack"}
_RESERVED = [*pythonjsonlogger.core.RESERVED_ATTRS, "taskName", *_CONTEXT]
_HANDLER_MARK = "_finetune_handler"


class ContextFilter(logging.Filter):
    """Puts the current request id and job id on every record that reaches the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, variable.get())
        return True


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line (python-json-logger): time (UTC), level, logger, message, pid, the context's ids,
    ``extra=`` fields, and the traceback of an exception as one string."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}{process}",
            style="{",
            rename_fields=_RENAMED,
            reserved_attrs=_RESERVED,
            json_default=str,
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_data["time"] = when.replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)
        log_data |= {name: value for name in _CONTEXT if (value := getattr(record, name, None)) is not None}
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args  # uvicorn's '%s - "%s %s HTTP/%s" %d'
            log_data |= {"client": client, "method": method, "path": path, "status": status}


class TextFormatter(logging.Formatter):
    """``2026-11-28 09:14:03,512 INFO app.api.jobs [req_01JDX…]: message``: the ids only where there are some."""

    def format(self, record: logging.LogRecord) -> str:
        ids = "".join(f" [{value}]" for name in _CONTEXT if (value := getattr(record, name, None)))
        line = f"{self.formatTime(record)} {record.levelname} {record.name}{ids}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(
    log_format: LogFormat, level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to one handler on the root logger, in ``log_format``, at ``level``, and
    return it. uvicorn's and Celery's loggers lose any handler of their own and propagate to it. Calling
    this again replaces the handler it installed before (and only that one: a test's capture handler stays).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings become records in the same format
    return handler


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every record logged inside the block (and in threads started with ``start_in_context``) names the job."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


def start_in_context(thread: threading.Thread) -> None:
    """Start ``thread`` in a copy of the current context, so its records carry the same ids: before Python
    3.14 a new thread starts in an empty context."""
    context = contextvars.copy_context()
    run = thread.run
    thread.run = lambda: context.run(run)  # type: ignore[method-assign]
    thread.start()
