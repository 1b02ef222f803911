"""sanic's own log records, kept off stderr unless they matter.

The API's stderr carries our events only: sanic's banner and access log are
off, its info chatter ("Starting worker") is dropped, and its warnings and
errors become one ``server.framework_log`` event each.
"""

from __future__ import annotations

import logging
import traceback

import structlog

log = structlog.get_logger()

SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.server", "sanic.access", "sanic.websockets")


class ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = {"msg": record.getMessage(), "logger": record.name}
        if record.exc_info:
            fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        if record.levelno >= logging.ERROR:
            log.error("server.framework_log", **fields)
        else:
            log.warning("server.framework_log", **fields)


def route_framework_logs() -> None:
    handler = ToStructlog(logging.WARNING)
    for name in SANIC_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
