"""HTTP errors, and the one handler that turns any exception into a JSON error.

Errors raised by handlers are PortunusError subclasses, like everywhere
else; ``http_status`` says how the API reports them. Errors from the core
(backup engine, store) are mapped by their exit code. Nothing a client sends
can produce a 500: that status means a bug, logged as ``internal_error``.
"""

from __future__ import annotations

import traceback
from typing import Any

import apsw
import structlog
from sanic import Sanic, exceptions, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.errors import PortunusError
from portunus.store.connection import CORRUPTION

log = structlog.get_logger()

# SQLite refusing to write (disk full, I/O error, read-only filesystem): the
# transaction was rolled back; the server's environment, not a bug.
STORE_FAILURES = (apsw.FullError, apsw.IOError, apsw.ReadOnlyError, apsw.CantOpenError)

# Core errors reaching the API (through the backup endpoint, the store): a
# missing or full backup dir is the server's problem to fix, not a bug (503).
STATUS_BY_EXIT_CODE = {2: 400, 5: 404, 6: 409, 7: 503, 74: 503, 75: 503, 78: 503}

# Core errors that mean the live store itself is damaged.
DAMAGE_EVENTS = ("api.store_corrupt", "backup.source_corrupt")


class ApiError(PortunusError):
    """An error the API reports with ``http_status``."""

    http_status = 500
    default_event = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.field = field
        # More of the answer, beside "error" and "message": what was done
        # before the failure (the backup a failed pruning followed).
        self.details = details or {}


class InvalidInput(ApiError):
    """Bad JSON, an unknown field, a missing or out-of-range value (400)."""

    http_status = 400
    default_event = "api.invalid_input"


class Unauthorized(ApiError):
    """No bearer token, or one the server does not know (401)."""

    http_status = 401
    default_event = "auth.failure"


class Forbidden(ApiError):
    """A viewer token on an admin-only request (403)."""

    http_status = 403
    default_event = "auth.forbidden"


class NotFound(ApiError):
    """No such route, token, client or rule (404)."""

    http_status = 404
    default_event = "api.not_found"


class MethodNotAllowed(ApiError):
    """The route exists, the method does not (405)."""

    http_status = 405
    default_event = "api.method_not_allowed"


class Conflict(ApiError):
    """The request clashes with the state: a taken name, an overlapping
    listen port, the last admin token (409)."""

    http_status = 409
    default_event = "api.conflict"


class PayloadTooLarge(ApiError):
    """The body exceeds the request size limit (413)."""

    http_status = 413
    default_event = "api.payload_too_large"


class RequestTimedOut(ApiError):
    """The request (its headers, or the body its Content-Length announced)
    did not arrive in time (408); the connection is closed after the answer."""

    http_status = 408
    default_event = "api.request_timeout"


class ClientClosedRequest(ApiError):
    """The client hung up before the answer (499, nginx's convention): logged
    and counted, never sent. A write already handed to the writer still
    commits, with its audit row."""

    http_status = 499
    default_event = "api.client_closed_request"


class Unavailable(ApiError):
    """The server cannot do this now: not ready, not configured (503)."""

    http_status = 503
    default_event = "api.unavailable"


class StoreDamaged(Unavailable):
    """SQLite found state.db damaged: the store is no longer trusted (503).
    SQLite's own words go to the log only."""

    default_event = "api.store_corrupt"

    def __init__(self, **fields: Any) -> None:
        super().__init__(
            "the server's store is damaged; it refuses writes and reports not ready",
            hint="the operator restores state.db from a backup (docs/operations.md, "
            "'A damaged store')",
            **fields,
        )


def setup_errors(app: Sanic) -> None:
    app.error_handler.add(Exception, render_error)
    # Not an Exception (a CancelledError), so registered on its own.
    app.error_handler.add(exceptions.RequestCancelled, render_error)


def render_error(request: Request, exc: BaseException) -> HTTPResponse:
    request_log = request.app.ctx.request_log
    request_log.ensure_begun(request)  # the id in the error's log lines too
    error = as_portunus_error(exc)
    if error.event in DAMAGE_EVENTS:
        error = _store_damaged(request, error)
    status = http_status(error)
    request.ctx.error_event = error.event
    if status >= 500:
        _log_server_error(request, error, exc)
    body: dict[str, Any] = {**getattr(error, "details", {}), "error": error.event}
    body["message"] = error.message
    if getattr(error, "field", None):
        body["field"] = error.field
    if error.hint:
        body["hint"] = error.hint
    headers = {"WWW-Authenticate": 'Bearer realm="portunus"'} if status == 401 else None
    response = json(body, status=status, headers=headers)
    request_log.finish(request, response)
    return response


def _store_damaged(request: Request, error: PortunusError) -> StoreDamaged:
    """One answer for damage however a request met it (a read, a write, an
    online backup); the store remembers it from then on."""
    detail = error.fields.get("sqlite_error") or error.message
    request.app.ctx.store.mark_damaged(detail)
    if isinstance(error, StoreDamaged):
        return error
    return StoreDamaged(sqlite_error=detail, found_by=error.event)


def _log_server_error(request: Request, error: PortunusError, exc: BaseException) -> None:
    fields = {k: v for k, v in error.fields.items() if v is not None}
    if error.event == "internal_error":
        fields["traceback"] = "".join(traceback.format_exception(exc))
    # The error's own fields win: a backup error's ``path`` is the file that
    # failed (the request's path is on its http.request line as well).
    fields = {"method": request.method, "path": request.path, **fields}
    log.error(error.event, msg=error.message, hint=error.hint, **fields)


def http_status(error: PortunusError) -> int:
    if isinstance(error, ApiError):
        return error.http_status
    return STATUS_BY_EXIT_CODE.get(error.exit_code, 500)


def as_portunus_error(exc: BaseException) -> PortunusError:
    """Sanic's own exceptions (routing, body limits, malformed requests)
    speak the API's error language too."""
    if isinstance(exc, PortunusError):
        return exc
    if isinstance(exc, CORRUPTION):
        return StoreDamaged(sqlite_error=str(exc))
    if isinstance(exc, apsw.BusyError):
        # Only another process can hold the write lock past the busy
        # timeout: the server's writes all go through its one writer.
        return Unavailable(
            f"the store stayed locked by another process: {exc}",
            event="api.store_unavailable",
            hint="something outside the server (a sqlite3 shell?) holds a write "
            "transaction on state.db; end it; nothing was half-written",
        )
    if isinstance(exc, STORE_FAILURES):
        return Unavailable(
            f"the store could not be used: {exc}",
            event="api.store_unavailable",
            hint="check free space and permissions in the data dir; nothing was half-written",
        )
    if isinstance(exc, exceptions.RequestTimeout):
        return RequestTimedOut(
            "the request did not arrive in time",
            hint="send the request line and headers without pausing",
        )
    if isinstance(exc, exceptions.RequestCancelled):
        return ClientClosedRequest("the client closed the connection before the response")
    if isinstance(exc, exceptions.NotFound):
        return NotFound("no such route")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return MethodNotAllowed(str(exc))
    if isinstance(exc, exceptions.PayloadTooLarge):
        if "header" in str(exc).lower():
            return PayloadTooLarge(
                "request line and headers too large",
                hint="the request line and headers are limited to 8 KiB together",
            )
        return PayloadTooLarge("request body too large", hint="bodies are limited to 64 KiB")
    if isinstance(exc, exceptions.SanicException) and 400 <= exc.status_code < 500:
        return _client_error(exc)
    return PortunusError(f"unexpected error: {exc!r}", hint="this is a bug; please report it")


def _client_error(exc: exceptions.SanicException) -> ApiError:
    error = InvalidInput(str(exc) or "malformed request")
    error.http_status = exc.status_code
    return error
