"""Jobs: POST /jobs exactly per the spec, GET /jobs and /jobs/{id}, submit and finish."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway import accounts, jobs
from gateway.accounts import Principal
from gateway.api.keys import ADDRESSES, DB, SECRET, STORAGE, WRITER
from gateway.api.middleware import endpoint, is_form, principal, read_body
from gateway.errors import Forbidden, InvalidParameter, MissingParameter, NameRequired

LIMITS = {"name": 255, "description": 4000, "invoiceReference": 255}
MAX_TAGS, MAX_TAG_LEN, MAX_URL_LEN = 50, 100, 2000
INT_MAX = 2**63 - 1


# ----------------------------------------------------------------------------- reading a create-job body

def _scalar(body: dict[str, Any], field: str, form: bool) -> Any:
    value = body.get(field)
    if form and isinstance(value, list):
        raise InvalidParameter(field, "given more than once")
    return value


def _string(body: dict[str, Any], field: str, form: bool) -> str | None:
    value = _scalar(body, field, form)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(field, "expected a string")
    if len(value) > LIMITS[field]:
        raise InvalidParameter(field, f"at most {LIMITS[field]} characters")
    return value


def _boolean(body: dict[str, Any], field: str, form: bool) -> bool | None:
    value = _scalar(body, field, form)
    if value is None or (form and value == ""):
        return None
    if form and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not form and isinstance(value, bool):
        return value
    raise InvalidParameter(field, "expected true or false")


def _integer(body: dict[str, Any], field: str, form: bool) -> int | None:
    value = _scalar(body, field, form)
    if value is None or (form and value == ""):
        return None
    if form and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if not form and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX:
        return value
    raise InvalidParameter(field, "expected an integer")


def _tags(body: dict[str, Any], form: bool) -> tuple[str, ...]:
    value = body.get("tags")
    if value is None:
        return ()
    if form:
        items = value if isinstance(value, list) else [value]
        tags = [t.strip() for item in items for t in item.split(",") if t.strip()]
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        tags = list(value)
    else:
        raise InvalidParameter("tags", "expected a list of strings")
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_LEN or not t for t in tags):
        raise InvalidParameter("tags", f"at most {MAX_TAGS} non-empty tags of at most {MAX_TAG_LEN} characters")
    return tuple(tags)


def _callback_url(body: dict[str, Any], form: bool) -> str | None:
    value = _scalar(body, "callbackUrl", form)
    if value is None or value == "":
        return None
    bad = InvalidParameter("callbackUrl", "expected an absolute http or https URL")
    if not isinstance(value, str) or len(value) > MAX_URL_LEN or not value.isascii():
        raise bad
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad
    try:
        u = urlsplit(value)
        _ = u.port  # raises on a port out of range
    except ValueError:
        raise bad from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise bad
    return value


def parse_new_job(body: dict[str, Any], form: bool) -> jobs.NewJob:
    """The spec's order: name_required, then missing_parameter, then invalid_parameter."""
    name = _scalar(body, "name", form)
    if name is None or name == "":
        raise NameRequired()
    if _scalar(body, "description", form) is None:
        raise MissingParameter("description")
    return jobs.NewJob(
        name=_string(body, "name", form) or "",
        description=_string(body, "description", form) or "",
        invoice_reference=_string(body, "invoiceReference", form),
        is_test=bool(_boolean(body, "isTest", form)),
        deadline_id=_integer(body, "deadlineId", form),
        specification_key=_integer(body, "specificationKey", form),
        tags=_tags(body, form),
        callback_url=_callback_url(body, form),
    )


# ----------------------------------------------------------------------------- the job body

def upload_key(secret: bytes, job_id: int) -> str:
    """The postUrl capability: unguessable, scoped to one job, derived so nothing is stored."""
    return accounts.derive(secret, "upload", job_id, length=32)


def job_body(app: web.Application, job: dict[str, Any], who: Principal | None, type_: str,
             detail: bool = True, new: bool = False) -> dict[str, Any]:
    """The job as the API shows it; without a principal (a callback) no capability URL is included."""
    addrs, secret = app[ADDRESSES], app[SECRET]
    ftp = f"{addrs.ftp_base()}/{job['day']}/{job['id']}"
    post = get = None
    # the query values are integers and URL-safe base64 tokens: nothing to escape
    if who is not None and not who.is_processor:
        post = f"{addrs.public_url}/upload/UploadFile.ashx?jobID={job['id']}&accountID={upload_key(secret, job['id'])}"
    if who is not None:
        token = accounts.download_token(secret, job["id"], who)
        get = f"{addrs.public_url}/ajax/DownloadZip.ashx?centraljobid={job['id']}&sessionID={token}"
    body: dict[str, Any] = {
        "id": job["id"],
        "name": job["name"],
        "description": job["description"],
        "tags": job["tags"],
        "invoiceReference": job["invoice_reference"],
        "isTest": bool(job["is_test"]),
        "deadlineId": job["deadline_id"],
        "specificationKey": job["specification_key"],
        "callbackUrl": job["callback_url"],
        "status": job["status"],
        "createdDate": job["created_at"],
        "accountId": job["account_id"],
        "upload": {"ftpUrl": f"{ftp}/ORIGINAL/", "postUrl": post, "ftpUsername": jobs.job_ftp_username(job["id"])},
        "download": {"ftpUrl": f"{ftp}/CLIPPED/", "getUrl": get},
    }
    if new:  # just created: nothing to look up
        actor = who.login if who else None
        body.update(originalCount=0, clippedCount=0,
                    statusHistory=[{"status": job["status"], "at": job["created_at"], "actor": actor}])
    elif detail:
        db = app[DB]
        counts = jobs.file_counts(db, job["id"])
        body["originalCount"] = counts["ORIGINAL"]
        body["clippedCount"] = counts["CLIPPED"]
        body["statusHistory"] = jobs.job_history(db, job["id"])
    body["_type"] = type_
    return body


# ----------------------------------------------------------------------------- handlers

@endpoint(body="required")
async def create_job(request: web.Request) -> web.Response:
    who = principal(request)
    if who.is_processor or who.account_id is None:
        raise Forbidden("Processors cannot create jobs.")
    new = parse_new_job(await read_body(request), is_form(request))
    ftp_password = accounts.new_token()
    app = request.app
    job = await app[WRITER].run(jobs.create_job, app[STORAGE], who, new, accounts.token_hash(ftp_password))
    body = job_body(request.app, job, who, "CreateJobResponseBody", new=True)
    body["upload"]["ftpPassword"] = ftp_password  # shown once, stored hashed
    return web.json_response(body, status=201, headers={"Location": f"/jobs/{job['id']}"})


def _job_id(request: web.Request) -> int:
    return int(request.match_info["id"])


@endpoint()
async def get_job(request: web.Request) -> web.Response:
    who = principal(request)
    job = jobs.require_job(request.app[DB], _job_id(request), who)
    return web.json_response(job_body(request.app, job, who, "GetJobResponseBody"))


def _page_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw[:12]) <= maximum:
        raise InvalidParameter(name, f"expected an integer from 1 to {maximum}")
    return int(raw)


@endpoint()
async def list_jobs(request: web.Request) -> web.Response:
    who = principal(request)
    page = _page_param(request, "page", 1, 1_000_000)
    size = _page_param(request, "pageSize", 20, 100)
    status = request.query.get("status") or None
    if status is not None and status not in jobs.STATUSES:
        raise InvalidParameter("status", f"expected one of {', '.join(jobs.STATUSES)}")
    rows, total = jobs.list_jobs(request.app[DB], who, page, size, status)
    return web.json_response({
        "jobs": [job_body(request.app, r, who, "JobListItem", detail=False) for r in rows],
        "page": page, "pageSize": size, "total": total, "_type": "GetJobsResponseBody"})


@endpoint(body="optional")
async def submit_job(request: web.Request) -> web.Response:
    who = principal(request)
    job = await request.app[WRITER].run(jobs.submit_job, _job_id(request), who)
    return web.json_response(job_body(request.app, job, who, "GetJobResponseBody"))


@endpoint(body="optional")
async def finish_job(request: web.Request) -> web.Response:
    who = principal(request)
    job = await request.app[WRITER].run(jobs.finish_job, _job_id(request), who)
    return web.json_response(job_body(request.app, job, who, "GetJobResponseBody"))
