"""DeepSeek's error contract (api.md §A9): a status per cause and an OpenAI-shaped body.

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

Routes raise `APIError`; the handlers below turn it, malformed JSON and schema violations into
that shape. A client mistake is always a 4xx; only a bug on our side is a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# status -> (DeepSeek's name for it, OpenAI error type)
KINDS = {
    400: ("Invalid Format", "invalid_request_error"),
    401: ("Authentication Fails", "authentication_error"),
    402: ("Insufficient Balance", "insufficient_balance_error"),
    404: ("Not Found", "invalid_request_error"),
    405: ("Method Not Allowed", "invalid_request_error"),
    413: ("Request Too Large", "invalid_request_error"),
    422: ("Invalid Parameters", "invalid_request_error"),
    429: ("Rate Limit Reached", "rate_limit_error"),
    500: ("Server Error", "api_error"),
    503: ("Server Overloaded", "service_unavailable_error"),
}

# Pydantic error types that mean "a value is out of its allowed range" (422), not "malformed" (400).
_VALUE_ERRORS = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short",
    "string_pattern_mismatch", "string_too_long", "string_too_short", "literal_error", "enum",
    "value_error", "multiple_of", "finite_number",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or KINDS.get(status, ("", "api_error"))[1]
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = KINDS.get(status, ("Error", "api_error"))[1]
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status,
                        headers=err.headers)


def _validation_status(errors: list[dict]) -> int:
    if any(e.get("type") in ("json_invalid", "model_attributes_type", "dict_type") and
           tuple(e.get("loc", ()))[:1] == ("body",) and len(e.get("loc", ())) <= 1 for e in errors):
        return 400
    # A union field reports one error per branch: any range error means the value was understood.
    return 422 if any(e.get("type") in _VALUE_ERRORS for e in errors) else 400


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    first = next((e for e in errors if e.get("type") in _VALUE_ERRORS), errors[0])
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "Malformed JSON body: " + str(first.get("ctx", {}).get("error", first.get("msg"))), None
    if not loc:
        return "The request body must be a JSON object", None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        errors = list(err.errors())
        message, param = _describe(errors) if errors else ("Invalid request body", None)
        status = _validation_status(errors) if errors else 400
        return JSONResponse(error_body(status, message, param), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return JSONResponse(error_body(err.status_code, str(err.detail)), status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crash(_: Request, err: Exception):
        log.exception("unhandled error")
        return JSONResponse(error_body(500, "The server had an error while processing your request."),
                            status_code=500)
