"""GET /jobs/{id}, GET /jobs, the catalogs, JSON errors for every failure, /openapi.json, /docs, /health."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlite_utils
from conftest import JSON, Gateway, GatewayFactory, assert_error

from gateway import accounts, jobs
from gateway.api.jobs import LIMITS
from gateway.api.keys import STORAGE


async def make_jobs(gw: Gateway, session: str, n: int, prefix: str = "job") -> list[int]:
    """n jobs created by the session's user, in one writer call through the domain function."""
    storage = gw.app[STORAGE]

    def create(db: sqlite_utils.Database) -> list[int]:
        who = accounts.authenticate(db, gw.world.clients["web"], session)
        return [jobs.create_job(db, storage, who, jobs.NewJob(f"{prefix}-{i}", "d"), "x")["id"] for i in range(n)]

    return await gw.write(create)


async def list_ids(gw: Gateway, session: str, query: str = "") -> tuple[list[int], dict[str, Any]]:
    r = await gw.call("GET", f"/jobs{query}", session=session)
    assert r.status == 200, r
    body = r.json()
    assert body["_type"] == "GetJobsResponseBody"
    return [j["id"] for j in body["jobs"]], body


# ----------------------------------------------------------------------------- GET /jobs/{id}

async def test_get_job_returns_what_create_returned(gw: Gateway) -> None:
    s = await gw.session("alice")
    created = await gw.create_job(s, tags=["Apple"], isTest=True, invoiceReference="inv-1",
                                  deadlineId=gw.world.deadline["id"], specificationKey=432)
    r = await gw.call("GET", f"/jobs/{created['id']}", session=s)
    assert r.status == 200, r
    assert r.content_type == JSON
    got = r.json()
    assert got["_type"] == "GetJobResponseBody"
    for k in ("id", "name", "description", "tags", "invoiceReference", "isTest", "deadlineId",
              "specificationKey", "status", "createdDate"):
        assert got[k] == created[k], k
    assert got["upload"]["ftpUrl"] == created["upload"]["ftpUrl"]
    assert got["upload"]["postUrl"] == created["upload"]["postUrl"]
    assert got["download"]["ftpUrl"] == created["download"]["ftpUrl"]
    assert got["download"]["getUrl"].startswith(f"{gw.public_url}/ajax/DownloadZip.ashx?centraljobid={created['id']}&")
    assert s not in r.text


async def test_another_accounts_job_is_404_exactly_like_a_missing_one(gw: Gateway) -> None:
    bobs = await gw.create_job(await gw.session("bob"))
    s = await gw.session("alice")
    missing_id = bobs["id"] + 1000
    foreign = assert_error(await gw.call("GET", f"/jobs/{bobs['id']}", session=s), 404)
    missing = assert_error(await gw.call("GET", f"/jobs/{missing_id}", session=s), 404)
    assert foreign["code"] == missing["code"] == "job_not_found"
    assert foreign["message"].replace(str(bobs["id"]), "N") == missing["message"].replace(str(missing_id), "N")
    assert set(foreign) == set(missing)


async def test_same_account_and_processor_see_the_job(gw: Gateway) -> None:
    job = await gw.create_job(await gw.session("alice"))
    for login in ("carol", "pat"):
        r = await gw.call("GET", f"/jobs/{job['id']}", session=await gw.session(login))
        assert r.status == 200, (login, r)
        assert r.json()["id"] == job["id"]


@pytest.mark.parametrize("path", ["/jobs/0", "/jobs/9999999999999999999", "/jobs/99999999999999999999",
                                  "/jobs/abc", "/jobs/-1", "/jobs/1.0"])
async def test_impossible_job_ids_are_404(gw: Gateway, path: str) -> None:
    assert_error(await gw.call("GET", path, session=await gw.session("alice")), 404)


async def test_get_job_needs_accept_and_both_tokens(gw: Gateway) -> None:
    s = await gw.session("alice")
    job = await gw.create_job(s)
    path = f"/jobs/{job['id']}"
    assert_error(await gw.call("GET", path, session=s, accept=None), 406)
    assert_error(await gw.call("GET", path), 400, "missing_header", headerName="X-Session-Token")
    assert_error(await gw.call("GET", path, session=accounts.new_token()), 401)


# ----------------------------------------------------------------------------- GET /jobs

async def test_list_pages_newest_first(gw: Gateway) -> None:
    s = await gw.session("alice")
    ids = await make_jobs(gw, s, 5)
    newest_first = sorted(ids, reverse=True)
    pages = []
    for page in (1, 2, 3, 4):
        got, body = await list_ids(gw, s, f"?page={page}&pageSize=2")
        assert (body["page"], body["pageSize"], body["total"]) == (page, 2, 5)
        pages.append(got)
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:], []]


async def test_list_defaults_and_page_size_limit(gw: Gateway) -> None:
    s = await gw.session("alice")
    await make_jobs(gw, s, 101)
    got, body = await list_ids(gw, s)
    assert (len(got), body["page"], body["pageSize"], body["total"]) == (20, 1, 20, 101)
    got, body = await list_ids(gw, s, "?pageSize=100")
    assert len(got) == 100 and got == sorted(got, reverse=True)
    got, _ = await list_ids(gw, s, "?pageSize=100&page=2")
    assert len(got) == 1
    assert_error(await gw.call("GET", "/jobs?pageSize=101", session=s), 400, "invalid_parameter",
                 parameterName="pageSize")


@pytest.mark.parametrize(("query", "name"), [
    ("pageSize=0", "pageSize"), ("pageSize=-1", "pageSize"), ("pageSize=abc", "pageSize"),
    ("pageSize=1.5", "pageSize"), ("pageSize=101", "pageSize"), ("page=0", "page"), ("page=abc", "page"),
    ("page=-2", "page"), ("status=BOGUS", "status"), ("status=cj_preprocess", "status"),
])
async def test_bad_list_parameters_are_400(gw: Gateway, query: str, name: str) -> None:
    r = await gw.call("GET", f"/jobs?{query}", session=await gw.session("alice"))
    assert_error(r, 400, "invalid_parameter", parameterName=name)


async def test_customer_sees_its_accounts_jobs_and_processor_sees_all(gw: Gateway) -> None:
    alice, carol, bob = [await gw.session(u) for u in ("alice", "carol", "bob")]
    a = (await gw.create_job(alice))["id"]
    c = (await gw.create_job(carol))["id"]
    b = (await gw.create_job(bob))["id"]
    assert (await list_ids(gw, alice))[0] == [c, a]
    assert (await list_ids(gw, carol))[0] == [c, a]
    assert (await list_ids(gw, bob))[0] == [b]
    ids, body = await list_ids(gw, await gw.session("pat"))
    assert ids == [b, c, a] and body["total"] == 3


async def test_list_filters_by_status(gw: Gateway) -> None:
    s = await gw.session("alice")
    first, second, third = await make_jobs(gw, s, 3)
    await gw.write(lambda db: db.execute("update jobs set status = ? where id = ?", [jobs.WORK_PROGRESS, second]))
    assert (await list_ids(gw, s, "?status=CJ_PREPROCESS"))[0] == [third, first]
    ids, body = await list_ids(gw, s, "?status=CJ_WORK_PROGRESS")
    assert ids == [second] and body["total"] == 1
    assert (await list_ids(gw, s, "?status=CJ_FINISHED"))[0] == []
    assert (await list_ids(gw, s, "?status="))[0] == [third, second, first]


async def test_list_items_carry_the_job_fields_and_no_ftp_password(gw: Gateway) -> None:
    s = await gw.session("alice")
    created = await gw.create_job(s, tags=["x"])
    r = await gw.call("GET", "/jobs", session=s)
    item = r.json()["jobs"][0]
    for k in ("id", "name", "description", "tags", "status", "createdDate"):
        assert item[k] == created[k]
    assert item["upload"]["ftpUrl"] == created["upload"]["ftpUrl"]
    assert created["upload"]["ftpPassword"] not in r.text


# ----------------------------------------------------------------------------- catalogs

async def test_deadlines_list_what_was_created(gw: Gateway) -> None:
    extra = await gw.write(jobs.create_deadline, "Next week", 168)
    r = await gw.call("GET", "/deadlines", session=await gw.session("alice"))
    assert r.status == 200, r
    assert r.json() == {"deadlines": [gw.world.deadline, extra], "_type": "GetDeadlinesResponseBody"}
    assert gw.world.deadline == {"id": gw.world.deadline["id"], "name": "Tomorrow", "hours": 24}


async def test_specifications_list_what_was_created(gw: Gateway) -> None:
    await gw.write(jobs.create_specification, 7, "Shadow")
    r = await gw.call("GET", "/specifications", session=await gw.session("bob"))
    assert r.status == 200, r
    assert r.json() == {"specifications": [{"key": 7, "name": "Shadow"}, {"key": 432, "name": "Clipping path"}],
                        "_type": "GetSpecificationsResponseBody"}


async def test_statuses_are_the_four_with_descriptions(gw: Gateway) -> None:
    r = await gw.call("GET", "/config/statuses", session=await gw.session("pat"))
    assert r.status == 200, r
    statuses = r.json()["statuses"]
    assert [x["code"] for x in statuses] == ["CJ_PREPROCESS", "CJ_WORK_PROGRESS", "CJ_FINISHED", "CJ_ARCHIVED"]
    assert all(isinstance(x["description"], str) and x["description"] for x in statuses)


@pytest.mark.parametrize("path", ["/deadlines", "/specifications", "/config/statuses", "/jobs"])
async def test_catalogs_need_accept_and_a_session(gw: Gateway, path: str) -> None:
    s = await gw.session("alice")
    assert_error(await gw.call("GET", path, session=s, accept=None), 406)
    assert_error(await gw.call("GET", path, session=s, accept="application/*"), 406)
    assert_error(await gw.call("GET", path), 400, "missing_header", headerName="X-Session-Token")
    assert_error(await gw.call("GET", path, session=s, client=None), 400, "missing_header",
                 headerName="X-Client-Token")
    assert_error(await gw.call("GET", path, session=accounts.new_token()), 401)


# ----------------------------------------------------------------------------- errors are JSON

@pytest.mark.parametrize(("method", "path"), [("GET", "/definitely/not/a/route"), ("POST", "/nope"),
                                              ("GET", "/jobs/1/nothing"), ("GET", "/upload"), ("GET", "/")])
async def test_unknown_route_is_404_json(gw: Gateway, method: str, path: str) -> None:
    r = await gw.call(method, path, accept=None, client=None)
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/jobs", {"GET", "POST"}), ("DELETE", "/jobs", {"GET", "POST"}), ("PATCH", "/jobs/1", {"GET"}),
    ("GET", "/sessions", {"POST", "DELETE"}), ("POST", "/deadlines", {"GET"}), ("DELETE", "/health", {"GET"}),
])
async def test_wrong_method_is_405_json_with_allow(gw: Gateway, method: str, path: str,
                                                   allowed: set[str]) -> None:
    r = await gw.call(method, path, session=await gw.session("alice"), json_body={"name": "x"})
    assert_error(r, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


async def test_body_over_the_limit_is_413_json(gw: Gateway) -> None:
    s = await gw.session("alice")
    r = await gw.post_job(s, {"name": "big", "description": "d" * (2 << 20)})
    assert_error(r, 413)
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


async def test_unexpected_failure_is_500_json_without_internals(gw: Gateway) -> None:
    s = await gw.session("alice")
    await gw.write(lambda db: db.execute("alter table deadlines rename to deadlines_gone"))
    r = await gw.call("GET", "/deadlines", session=s)
    body = assert_error(r, 500, "internal_error")
    assert set(body) == {"code", "message", "_type"}
    for leak in ("Traceback", "deadlines", "sqlite", "OperationalError", "no such table", ".py"):
        assert leak not in r.text


# ----------------------------------------------------------------------------- /openapi.json, /docs, /health

def router_operations(gw: Gateway, methods: tuple[str, ...] | None = None) -> set[tuple[str, str]]:
    """(method, path) of every route the router has (HEAD comes with GET; OPTIONS only when asked)."""
    ops = set()
    for route in gw.app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        if (route.method == "OPTIONS") != (methods == ("OPTIONS",)):
            continue
        canonical = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        ops.add((route.method.lower(), canonical))
    return ops


async def test_openapi_documents_every_route_of_the_router(gw: Gateway) -> None:
    r = await gw.call("GET", "/openapi.json", accept=None, client=None)
    assert r.status == 200, r
    assert r.content_type == JSON
    doc = r.json()
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    ops = router_operations(gw)
    assert len(ops) >= 12
    missing = ops - documented
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"
    for method, path in ops:
        assert doc["paths"][path][method]["responses"], (method, path)


async def test_openapi_documents_the_options_routes_too(gw: Gateway) -> None:
    doc = (await gw.call("GET", "/openapi.json", accept=None, client=None)).json()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    missing = router_operations(gw, ("OPTIONS",)) - documented
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"


async def test_openapi_describes_create_job_as_it_behaves(gw: Gateway) -> None:
    doc = (await gw.call("GET", "/openapi.json", accept=None, client=None)).json()
    op = doc["paths"]["/jobs"]["post"]
    assert {"201", "400", "401", "403", "406", "415"} <= set(op["responses"])
    assert set(op["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    schema = doc["components"]["schemas"]["CreateJobRequest"]
    assert set(schema["required"]) == {"name", "description"}
    for field, limit in LIMITS.items():
        assert schema["properties"][field]["maxLength"] == limit, field
    assert schema["properties"]["isTest"]["type"] == "boolean"
    assert schema["properties"]["deadlineId"]["type"] == "integer"
    assert {"clientToken", "sessionToken"} <= set(doc["components"]["securitySchemes"])
    assert doc["servers"] == [{"url": gw.public_url}]


async def test_docs_render_every_documented_path_as_html(gw: Gateway) -> None:
    doc = (await gw.call("GET", "/openapi.json", accept=None, client=None)).json()
    r = await gw.call("GET", "/docs", accept="text/html,application/xhtml+xml,*/*;q=0.8", client=None)
    assert r.status == 200, r
    assert r.content_type == "text/html"
    assert r.text.lstrip().lower().startswith("<!doctype html>")
    for path in doc["paths"]:
        assert f"<code>{path}</code>" in r.text, path


async def test_health_is_200_json_without_accept_or_tokens(gw: Gateway) -> None:
    r = await gw.call("GET", "/health", accept=None, client=None)
    assert r.status == 200, r
    assert r.content_type == JSON
    body = r.json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert body["storage"]["acceptingUploads"] is True


async def test_health_is_503_when_disk_space_is_below_the_floor(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"storage.min_free_bytes": 1 << 62}, world=False)
    r = await gw.call("GET", "/health", accept=None, client=None)
    assert r.status == 503, r
    assert r.json()["status"] == "low_disk_space"
    assert r.json()["storage"]["acceptingUploads"] is False
