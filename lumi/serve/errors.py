"""OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``) for every failure the API answers."""

from __future__ import annotations

from fastapi.responses import JSONResponse

RETRY_AFTER_S = 1  # what a 503 (server busy) tells the client to wait


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)
