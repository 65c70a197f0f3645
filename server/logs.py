"""Structured logs: one JSON object per line when ``log_format`` is ``json``.

Fields: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, ``request_id`` (the HTTP
request being served, see :class:`server.http.request_ids.RequestIds`; absent outside one) and
``error`` (the traceback) when an exception is logged. Messages say what happened and carry ids,
never keys, inputs or outputs: log calls pass those nowhere, and the error bodies and log lines
of a served request are checked for its input in ``tests/server/test_logs.py``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

# The id of the HTTP request being served (the client's X-Request-Id, or one made for it).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("verinfer_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


_format = "text"  # as configure() last set it: the format of say()'s lines


def say(message: str, level: int = logging.INFO, logger: str = "verinfer.server") -> None:
    """One of the server's own lines (serving, a process exited), said whatever the log level:
    ``verinfer: message`` on stderr, or with ``log_format`` ``json`` the JSON object of a log
    record of ``logger`` at ``level``, as every other line of the process."""
    if _format == "json":
        record = logging.LogRecord(logger, level, __file__, 0, message, (), None)
        line = JsonFormatter().format(record)
    else:
        line = f"verinfer: {message}"
    print(line, file=sys.stderr, flush=True)


def _json_error(message: str) -> None:
    say(message, logging.ERROR)


def configure(fmt: str, level: str) -> dict | None:
    """Set up the root logger in ``fmt`` (``text`` or ``json``) at ``level``; the log config
    to hand uvicorn (None: uvicorn's own text config)."""
    global _format
    import verifier.cli

    _format = fmt
    verifier.cli.error_line = _json_error if fmt == "json" else verifier.cli._plain_error
    if fmt != "json":
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return None
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers (errors, access) go through the root's JSON handler too
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"handlers": [], "propagate": True, "level": level.upper()}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}
