"""Domain errors; each names its HTTP status and code and its FTP reply. Translated only at the edges."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base: HTTP 500 internal_error, FTP 451."""

    status = 500
    code = "internal_error"
    ftp_code = 451
    default_message = "The server encountered an unexpected condition."
    headers: dict[str, str] = {}  # extra HTTP headers of the answer

    def __init__(self, message: str | None = None, code: str | None = None, **context: Any) -> None:
        self.message = message or self.default_message
        self.context = context
        if code:  # a more precise code than the class's (job_not_found, invalid_status, ...)
            self.code = code
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.context, "_type": "ErrorResponseBody"}


class BadRequest(GatewayError):
    """HTTP 400 (code set per instance), FTP 501."""

    status = 400
    code = "bad_request"
    ftp_code = 501
    default_message = "The request could not be understood."


class MissingHeader(BadRequest):
    """HTTP 400 missing_header with headerName."""

    code = "missing_header"
    default_message = "A required header was not supplied"

    def __init__(self, header: str) -> None:
        super().__init__(f"A required header was not supplied: {header}", headerName=header)


class InvalidJson(BadRequest):
    """HTTP 400 invalid_json."""

    code = "invalid_json"
    default_message = "The request body could not be parsed."


class MissingParameter(BadRequest):
    """HTTP 400 missing_parameter with parameterName."""

    code = "missing_parameter"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"A required parameter was not supplied: {name}", parameterName=name)


class InvalidParameter(BadRequest):
    """HTTP 400 invalid_parameter with parameterName; FTP 553 (a refused name)."""

    code = "invalid_parameter"
    ftp_code = 553

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"A parameter was not in the right format: {name}: {reason}", parameterName=name)
        self.reason = reason


class NameRequired(BadRequest):
    """HTTP 400 custom error 5 name_required (the spec's table)."""

    code = "name_required"

    def __init__(self) -> None:
        super().__init__("Name is required.", id=5, target="developer")


class ChecksumMismatch(BadRequest):
    """HTTP 400 checksum_mismatch: a Content-MD5 did not match the bytes received."""

    code = "checksum_mismatch"


class Unauthorized(GatewayError):
    """HTTP 401 unauthorized; FTP 530."""

    status = 401
    code = "unauthorized"
    ftp_code = 530
    default_message = "The request requires user authentication."


class Forbidden(GatewayError):
    """HTTP 403 forbidden; FTP 550."""

    status = 403
    code = "forbidden"
    ftp_code = 550
    default_message = "The client has no permission to access the resource."


class NotFound(GatewayError):
    """HTTP 404 not_found (or a more precise code); FTP 550."""

    status = 404
    code = "not_found"
    ftp_code = 550
    default_message = "The resource was not found."


class MethodNotAllowed(GatewayError):
    """HTTP 405 method_not_allowed."""

    status = 405
    code = "method_not_allowed"
    default_message = "The method is not allowed for this resource."


class NotAcceptable(GatewayError):
    """HTTP 406 not_acceptable."""

    status = 406
    code = "not_acceptable"
    default_message = "An Accept header explicitly accepting application/json is required."


class RequestTimeout(GatewayError):
    """HTTP 408 request_timeout; FTP 426."""

    status = 408
    code = "request_timeout"
    ftp_code = 426
    default_message = "The request body did not arrive in time."


class Conflict(GatewayError):
    """HTTP 409 (invalid_status, job_not_accepting_uploads, ...); FTP 550."""

    status = 409
    code = "conflict"
    ftp_code = 550


class Gone(GatewayError):
    """HTTP 410 job_archived; FTP 550."""

    status = 410
    code = "job_archived"
    ftp_code = 550
    default_message = "The job is archived: its files were removed."


class LengthRequired(GatewayError):
    """HTTP 411 length_required."""

    status = 411
    code = "length_required"
    default_message = "The request needs a Content-Length or chunked transfer encoding."


class PayloadTooLarge(GatewayError):
    """HTTP 413 (request_too_large, file_too_large); FTP 552."""

    status = 413
    code = "request_too_large"
    ftp_code = 552
    default_message = "The request body is too large."


class UnsupportedMediaType(GatewayError):
    """HTTP 415 unsupported_media_type."""

    status = 415
    code = "unsupported_media_type"
    default_message = (
        "The Content-Type of the request is not supported. "
        "Supported are 'application/x-www-form-urlencoded' and 'application/json'."
    )


class TooManyRequests(GatewayError):
    """HTTP 429 too_many_requests; FTP 421."""

    status = 429
    code = "too_many_requests"
    ftp_code = 421
    default_message = "Too many failed attempts; try again later."


class ServiceUnavailable(GatewayError):
    """HTTP 503 service_unavailable; FTP 421."""

    status = 503
    code = "service_unavailable"
    ftp_code = 421
    default_message = "The server is currently unavailable."


class ShuttingDown(ServiceUnavailable):
    """HTTP 503 shutting_down (with Retry-After, connection closed); FTP 421."""

    code = "shutting_down"
    default_message = "The server is shutting down; try again in a moment."
    headers = {"Retry-After": "10", "Connection": "close"}


class InsufficientStorage(GatewayError):
    """HTTP 507 insufficient_storage; FTP 552."""

    status = 507
    code = "insufficient_storage"
    ftp_code = 552
    default_message = "Not enough free space to store the file."
