"""The OpenAPI 3 document of the whole API, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.api.keys import ADDRESSES
from gateway.jobs import STATUSES

REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("ErrorResponseBody"), description)


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request: missing_header, invalid_json, missing_parameter, invalid_parameter",
            401: "Unknown or revoked client, unknown, expired or ended session",
            403: "The user has no permission for this", 404: "Not found (or not yours)",
            406: "Accept does not name application/json", 408: "The body stalled",
            409: "The job's status does not allow this", 410: "The job is archived",
            411: "Neither Content-Length nor chunked encoding", 413: "Too large",
            415: "Unsupported Content-Type", 416: "Range not satisfiable", 429: "Too many failed logins",
            503: "Shutting down or low on disk space", 507: "The disk is full"}
    return {str(c): _err(text[c]) for c in codes}


SECURED: list[dict[str, list[str]]] = [{"clientToken": [], "sessionToken": []}]
JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
BODY_JSON_FORM = ["application/json", "application/x-www-form-urlencoded"]


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {ct: {"schema": _ref(schema)} for ct in BODY_JSON_FORM}}


def _schemas() -> dict[str, Any]:
    s: dict[str, Any] = {}
    s["ErrorResponseBody"] = {
        "type": "object", "required": ["code", "message", "_type"], "additionalProperties": True,
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "headerName": {"type": "string"}, "parameterName": {"type": "string"},
                       "id": {"type": "integer"}, "target": {"type": "string"},
                       "_type": {"type": "string", "enum": ["ErrorResponseBody"]}}}
    s["CreateSessionRequest"] = {
        "type": "object", "required": ["login", "password"],
        "properties": {"login": {"type": "string", "minLength": 1, "maxLength": 1024},
                       "password": {"type": "string", "minLength": 1, "maxLength": 1024}}}
    s["CreateSessionResponseBody"] = {
        "type": "object", "required": ["token", "expiresAt", "_type"],
        "properties": {"token": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"},
                       "_type": {"type": "string", "enum": ["CreateSessionResponseBody"]}}}
    s["CreateJobRequest"] = {
        "type": "object", "required": ["name", "description"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "example": "Job of fruits"},
            "description": {"type": "string", "maxLength": 4000, "example": "Cleap fruits from background"},
            "invoiceReference": {"type": "string", "maxLength": 255, "nullable": True},
            "isTest": {"type": "boolean"},
            "deadlineId": {"type": "integer", "minimum": 0, "nullable": True},
            "specificationKey": {"type": "integer", "minimum": 0, "nullable": True},
            "tags": {"type": "array", "maxItems": 50, "items": {"type": "string", "minLength": 1, "maxLength": 100}},
            "callbackUrl": {"type": "string", "format": "uri", "maxLength": 2000, "nullable": True}}}
    urls = {"type": "object", "properties": {
        "ftpUrl": {"type": "string"}, "postUrl": {"type": "string", "nullable": True},
        "ftpUsername": {"type": "string"}, "ftpPassword": {"type": "string"}, "getUrl": {"type": "string"}}}
    job_props: dict[str, Any] = {
        "id": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "invoiceReference": {"type": "string", "nullable": True}, "isTest": {"type": "boolean"},
        "deadlineId": {"type": "integer", "nullable": True},
        "specificationKey": {"type": "integer", "nullable": True},
        "callbackUrl": {"type": "string", "nullable": True},
        "status": {"type": "string", "enum": list(STATUSES)},
        "createdDate": {"type": "string", "format": "date-time"}, "accountId": {"type": "string"},
        "upload": urls, "download": urls,
        "originalCount": {"type": "integer"}, "clippedCount": {"type": "integer"},
        "statusHistory": {"type": "array", "items": {"type": "object", "properties": {
            "status": {"type": "string"}, "at": {"type": "string"}, "actor": {"type": "string"}}}},
        "_type": {"type": "string"}}
    required = ["id", "name", "description", "tags", "invoiceReference", "isTest", "status", "createdDate",
                "upload", "download", "_type"]
    s["Job"] = {"type": "object", "required": required, "properties": job_props}
    s["GetJobsResponseBody"] = {
        "type": "object", "required": ["jobs", "page", "pageSize", "total", "_type"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}, "page": {"type": "integer"},
                       "pageSize": {"type": "integer"}, "total": {"type": "integer"},
                       "_type": {"type": "string"}}}
    s["FileRecord"] = {
        "type": "object", "required": ["id", "fileName", "path", "isOriginal", "size", "mD5", "createdDate"],
        "properties": {"id": {"type": "integer"}, "fileName": {"type": "string"}, "path": {"type": "string"},
                       "isOriginal": {"type": "boolean"}, "size": {"type": "integer"},
                       "mD5": {"type": "string"}, "crc32": {"type": "string"},
                       "createdDate": {"type": "string"}, "downloadUrl": {"type": "string"}}}
    s["GetFilesResponseBody"] = {
        "type": "object", "required": ["files", "_type"],
        "properties": {"files": {"type": "array", "items": _ref("FileRecord")}, "_type": {"type": "string"}}}
    s["UploadFilesResponseBody"] = {
        "type": "object", "required": ["files", "_type"],
        "properties": {"files": {"type": "array", "items": _ref("FileRecord")}, "_type": {"type": "string"}}}
    s["List"] = {"type": "object", "additionalProperties": True}
    return s


def _paths() -> dict[str, Any]:
    p: dict[str, Any] = {}
    p["/sessions"] = {
        "post": {"summary": "Log in: open a session for a user through an API client",
                 "security": [{"clientToken": []}], "requestBody": _body("CreateSessionRequest"),
                 "responses": {"201": _json(_ref("CreateSessionResponseBody"), "Session created"),
                               **_errors(400, 401, 406, 413, 415, 429)}},
        "delete": {"summary": "Log out: end the session", "security": SECURED,
                   "responses": {"204": {"description": "Session ended"}, **_errors(400, 401, 406, 415)}}}
    p["/jobs"] = {
        "post": {"summary": "Create a job (the Create Job API)", "security": SECURED,
                 "requestBody": _body("CreateJobRequest"),
                 "responses": {"201": {**_json(_ref("Job"), "Job created"),
                                       "headers": {"Location": {"schema": {"type": "string"}}}},
                               **_errors(400, 401, 403, 406, 413, 415)}},
        "get": {"summary": "List jobs, newest first (a customer sees its account's, a processor every one)",
                "security": SECURED,
                "parameters": [
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000000}},
                    {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}}],
                "responses": {"200": _json(_ref("GetJobsResponseBody"), "A page of jobs"),
                              **_errors(400, 401, 406)}}}
    p["/jobs/{id}"] = {"get": {"summary": "One job, with its status history and file counts",
                               "security": SECURED, "parameters": [JOB_ID],
                               "responses": {"200": _json(_ref("Job"), "The job"), **_errors(400, 401, 404, 406)}}}
    for action, who, codes in (("submit", "The customer submits the job (originals freeze)", (403, 409, 410)),
                               ("finish", "A processor finishes the job (clipped files freeze)", (403, 409, 410))):
        p[f"/jobs/{{id}}/{action}"] = {"post": {
            "summary": who, "security": SECURED, "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "The job in its new status"),
                          **_errors(400, 401, 404, 406, 415, *codes)}}}
    p["/jobs/{id}/files"] = {"get": {
        "summary": "The recorded files of a job, newest first", "security": SECURED,
        "parameters": [JOB_ID, {"name": "kind", "in": "query",
                                "schema": {"type": "string", "enum": ["original", "clipped"]}}],
        "responses": {"200": _json(_ref("GetFilesResponseBody"), "Files"), **_errors(400, 401, 404, 406)}}}
    multipart = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}
    p["/jobs/{id}/clipped"] = {"post": {
        "summary": "A processor delivers clipped files (multipart/form-data)", "security": SECURED,
        "parameters": [JOB_ID], "requestBody": multipart,
        "responses": {"201": _json(_ref("UploadFilesResponseBody"), "Stored"),
                      **_errors(400, 401, 403, 404, 406, 408, 409, 410, 411, 413, 415, 507)}}}
    p["/upload/UploadFile.ashx"] = {"post": {
        "summary": "Upload originals into a job (the job's postUrl; the URL is the capability)",
        "parameters": [{"name": "jobID", "in": "query", "required": True, "schema": {"type": "integer"}},
                       {"name": "accountID", "in": "query", "required": True, "schema": {"type": "string"}}],
        "requestBody": multipart,
        "responses": {"201": _json(_ref("UploadFilesResponseBody"), "Stored"),
                      **_errors(400, 404, 408, 409, 410, 411, 413, 415, 507)}},
        "options": {"summary": "CORS preflight for browsers on [http] cors_origins",
                    "responses": {"204": {"description": "The origin may upload"},
                                  **_errors(403)}}}
    binary = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    p["/ajax/DownloadZip.ashx"] = {"get": {
        "summary": "Every clipped (or ?kind=original) file of a job as one stored zip; Range supported",
        "parameters": [{"name": "centraljobid", "in": "query", "required": True, "schema": {"type": "integer"}},
                       {"name": "sessionID", "in": "query", "required": True, "schema": {"type": "string"}},
                       {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["original", "clipped"]}}],
        "responses": {"200": {"description": "The zip", "content": binary},
                      "206": {"description": "A range of the zip", "content": binary},
                      **_errors(400, 401, 404, 410, 416)}}}
    p["/ajax/DownloadBin.ashx"] = {"get": {
        "summary": "One file of a job; Range supported",
        "parameters": [{"name": "fileID", "in": "query", "required": True, "schema": {"type": "integer"}},
                       {"name": "sessionid", "in": "query", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The file", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
                      "206": {"description": "A range of the file"}, **_errors(400, 401, 404, 410, 416)}}}
    for path, _key, summary in (("/deadlines", "deadlines", "Deadlines a job may name"),
                               ("/specifications", "specifications", "Specifications a job may name"),
                               ("/config/statuses", "statuses", "The job statuses and what they mean")):
        p[path] = {"get": {"summary": summary, "security": SECURED,
                           "responses": {"200": _json(_ref("List"), summary), **_errors(400, 401, 406)}}}
    p["/health"] = {"get": {"summary": "Liveness, database and free disk space",
                            "responses": {"200": _json(_ref("List"), "Healthy"),
                                          "503": _json(_ref("List"), "Low on disk space or database down")}}}
    p["/openapi.json"] = {"get": {"summary": "This document", "responses": {"200": _json(_ref("List"), "OpenAPI")}}}
    p["/docs"] = {"get": {"summary": "This document rendered as HTML",
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {
                              "schema": {"type": "string"}}}}}}}
    return p


def build_openapi(app: web.Application) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Job storage gateway", "version": __version__,
                 "description": "Create jobs, upload originals by FTP or HTTP, deliver and download clipped "
                                "images. JSON endpoints need an Accept header naming application/json, and the "
                                "X-Client-Token and X-Session-Token headers."},
        "servers": [{"url": app[ADDRESSES].public_url}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "clientToken": {"type": "apiKey", "in": "header", "name": "X-Client-Token"},
                "sessionToken": {"type": "apiKey", "in": "header", "name": "X-Session-Token"}},
            "schemas": _schemas()},
    }
