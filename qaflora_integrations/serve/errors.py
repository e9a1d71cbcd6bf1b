"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every client library reads this shape (the ``openai`` package raises
``BadRequestError``/``NotFoundError`` from it, with our message), so a bad request
says what is wrong in the caller's own terms. The engine's exceptions already say
what went wrong; here they only get a status: a client's mistake is 400 (404 for a
model or adapter that does not exist), and 500 is kept for our own bugs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from qaflora.errors import (
    ContextLengthError,
    DivergenceError,
    EngineClosedError,
    PromptError,
    QaFloraError,
    RequestTimeoutError,
    UnknownAdapterError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error response: raised anywhere in a request, rendered by the app's handler."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, status=400, param=param, code=code)


def model_not_found(message: str, param: str = "model") -> APIError:
    return APIError(message, status=404, type=NOT_FOUND, param=param, code="model_not_found")


def from_engine_error(exc: Exception, param: str | None = None) -> APIError:
    """The engine's exception for a request, as the error response it deserves."""
    if isinstance(exc, UnknownAdapterError):
        return model_not_found(str(exc), param=param or "fusion.adapters")
    if isinstance(exc, ContextLengthError):
        return invalid(str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, EngineClosedError):
        return APIError(str(exc), status=503, type=SERVER_ERROR, code="engine_closed")
    if isinstance(exc, RequestTimeoutError):
        return APIError(str(exc), status=408, type=INVALID_REQUEST, code="timeout")
    if isinstance(exc, DivergenceError):  # a broken adapter or dtype, not the client's doing
        return APIError(str(exc), status=500, type=SERVER_ERROR, code="divergence_error")
    if isinstance(exc, PromptError | ValueError):
        return invalid(str(exc), param=param)
    if isinstance(exc, QaFloraError):
        return APIError(str(exc), status=500, type=SERVER_ERROR)
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(
        f"internal error ({type(exc).__name__}); this is a bug in the server", status=500, type=SERVER_ERROR
    )


def _location(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # pydantic names union members in the path ("str", "list[...]"): drop them, they are noise
    parts = [p for p in parts if not (p.startswith(("list[", "dict[", "function-")) or p in ("str", "int"))]
    return ".".join(parts) or None


def from_validation_error(exc: RequestValidationError) -> APIError:
    """Pydantic's report on the body, as one readable 400 naming the first bad field."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "invalid JSON")
        return invalid(f"the request body is not valid JSON: {reason}", code="invalid_json")
    if any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return invalid(
            "the request body must be a JSON object (sent with Content-Type: application/json)",
            code="invalid_json",
        )
    messages = []
    for error in errors:
        where = _location(error.get("loc", ()))
        text = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        value = error.get("input")
        if error.get("type") == "missing":
            text = "this field is required"
        elif isinstance(value, str | int | float | bool) and not isinstance(
            error.get("ctx", {}).get("error"), Exception
        ):
            text = f"{text} (got {value!r})"
        messages.append(f"{where}: {text}" if where else text)
    first = _location(errors[0].get("loc", ())) if errors else None
    return invalid("; ".join(dict.fromkeys(messages)), param=first)


def install_error_handlers(app: FastAPI, on_error: Callable[[APIError], None] | None = None) -> None:
    """Render every failure of a request in OpenAI's error shape (and count it)."""

    def render(error: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(error)
        return error.response()

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(from_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return render(APIError(detail, status=exc.status_code, type=kind))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return render(from_engine_error(exc))
