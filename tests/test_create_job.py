"""POST /jobs exactly per the spec: negotiation, headers, auth, the order of checks, validation, the 201 body."""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import FORM, JSON, VALID_JOB, Gateway, GatewayFactory, Reply, assert_error, token_bytes
from multidict import CIMultiDict

from gateway import accounts
from gateway.api.keys import Addresses

BODY_KINDS = ("json", "form")
BROKEN_JSON = b'{"name": "Job of fruits", '


async def post(gw: Gateway, kind: str, fields: dict[str, Any], session: str | None, **kw: Any) -> Reply:
    """POST /jobs with the fields as a JSON object or as a form."""
    if kind == "json":
        return await gw.call("POST", "/jobs", session=session, json_body=fields, **kw)
    return await gw.call("POST", "/jobs", session=session, form=fields, **kw)


def nonce() -> str:
    return accounts.new_token()


def multipart_body(fields: dict[str, str], boundary: str = "gwtestboundary") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------- 406: Accept must name application/json

NOT_ACCEPTABLE = [None, "*/*", "application/*", "text/html", "application/xml", "text/json", "application/jsonx",
                  "application/json;q=0", "application/json; q=0.0", "text/html, application/json;q=0",
                  "*/*;q=1, application/*;q=1", "application/json;q=abc"]


@pytest.mark.parametrize("kind", BODY_KINDS)
@pytest.mark.parametrize("accept", NOT_ACCEPTABLE)
async def test_accept_not_naming_json_is_406(gw: Gateway, kind: str, accept: str | None) -> None:
    s = await gw.session("alice")
    assert_error(await post(gw, kind, VALID_JOB, s, accept=accept), 406, "not_acceptable")
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


ACCEPTABLE = ["application/json", "APPLICATION/JSON", "application/json; charset=utf-8",
              "text/html, application/json;q=0.5", "application/json;q=0.001", "*/*;q=0.1, application/json",
              "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"]


@pytest.mark.parametrize("kind", BODY_KINDS)
@pytest.mark.parametrize("accept", ACCEPTABLE)
async def test_accept_naming_json_alone_or_in_a_list_is_201(gw: Gateway, kind: str, accept: str) -> None:
    s = await gw.session("alice")
    r = await post(gw, kind, VALID_JOB, s, accept=accept)
    assert r.status == 201, r
    assert r.content_type == JSON


async def test_accept_split_over_two_header_lines_is_one_list(gw: Gateway) -> None:
    s = await gw.session("alice")
    h = CIMultiDict(gw.headers(s, accept=None))
    h.add("Accept", "text/html")
    h.add("Accept", "application/json")
    h["Content-Type"] = JSON
    async with gw.client.post("/jobs", headers=h, data=b'{"name": "n", "description": "d"}') as resp:
        assert resp.status == 201, await resp.text()


# ----------------------------------------------------------------------------- 415: JSON or form only

@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/octet-stream",
                                          "application/json-patch+json", "text/json", "application/jsonx"])
async def test_other_content_types_are_415(gw: Gateway, content_type: str) -> None:
    s = await gw.session("alice")
    r = await gw.call("POST", "/jobs", session=s, data=b'{"name": "n", "description": "d"}',
                      content_type=content_type)
    body = assert_error(r, 415, "unsupported_media_type")
    assert "application/json" in body["message"] and "application/x-www-form-urlencoded" in body["message"]


async def test_multipart_body_is_415(gw: Gateway) -> None:
    s = await gw.session("alice")
    data, ctype = multipart_body(VALID_JOB)
    assert_error(await gw.call("POST", "/jobs", session=s, data=data, content_type=ctype), 415,
                 "unsupported_media_type")
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


async def test_body_without_content_type_is_415(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert_error(await gw.call("POST", "/jobs", session=s, data=b'{"name": "n", "description": "d"}'), 415)


async def test_no_body_at_all_is_415(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert_error(await gw.call("POST", "/jobs", session=s), 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/x-www-form-urlencoded; charset=UTF-8"])
async def test_json_and_form_with_parameters_or_case_are_accepted(gw: Gateway, content_type: str) -> None:
    s = await gw.session("alice")
    data = (b'{"name": "n", "description": "d"}' if "json" in content_type.lower() else b"name=n&description=d")
    r = await gw.call("POST", "/jobs", session=s, data=data, content_type=content_type)
    assert r.status == 201, r
    assert r.json()["name"] == "n"


# ----------------------------------------------------------------------------- 400 missing_header

@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_missing_client_token_is_400_missing_header(gw: Gateway, kind: str) -> None:
    s = await gw.session("alice")
    assert_error(await post(gw, kind, VALID_JOB, s, client=None), 400, "missing_header",
                 headerName="X-Client-Token")


@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_missing_session_token_is_400_missing_header(gw: Gateway, kind: str) -> None:
    assert_error(await post(gw, kind, VALID_JOB, None), 400, "missing_header", headerName="X-Session-Token")


@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_missing_both_tokens_names_the_client_header_first(gw: Gateway, kind: str) -> None:
    assert_error(await post(gw, kind, VALID_JOB, None, client=None), 400, "missing_header",
                 headerName="X-Client-Token")


async def test_missing_session_header_wins_over_an_unknown_client_token(gw: Gateway) -> None:
    """Both headers must be present before either is looked up."""
    assert_error(await post(gw, "json", VALID_JOB, None, client=nonce()), 400, "missing_header",
                 headerName="X-Session-Token")


# ----------------------------------------------------------------------------- 401

@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_unknown_client_token_is_401(gw: Gateway, kind: str) -> None:
    s = await gw.session("alice")
    assert_error(await post(gw, kind, VALID_JOB, s, client=nonce()), 401, "unauthorized")


@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_unknown_session_token_is_401(gw: Gateway, kind: str) -> None:
    assert_error(await post(gw, kind, VALID_JOB, nonce()), 401, "unauthorized")


async def test_revoked_client_is_401_for_its_existing_session(gw: Gateway) -> None:
    s = await gw.session("alice", client="mobile")
    mobile = gw.world.clients["mobile"]
    assert (await post(gw, "json", VALID_JOB, s, client=mobile)).status == 201
    await gw.write(accounts.revoke_client, "mobile")
    assert_error(await post(gw, "json", VALID_JOB, s, client=mobile), 401, "unauthorized")
    assert_error(await gw.login_reply("alice", client=mobile), 401, "unauthorized")


async def test_expired_session_is_401(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"sessions.lifetime": 1.0})
    s = await gw.session("alice")
    assert (await post(gw, "json", VALID_JOB, s)).status == 201
    await asyncio.sleep(1.1)
    assert_error(await post(gw, "json", VALID_JOB, s), 401, "unauthorized")


async def test_session_whose_expiry_passed_in_the_database_is_401(gw: Gateway) -> None:
    s = await gw.session("alice")
    await gw.write(lambda db: db.execute("update sessions set expires_at = ? where token_hash = ?",
                                         [time.time() - 1, accounts.token_hash(s)]))
    assert_error(await post(gw, "form", VALID_JOB, s), 401, "unauthorized")


async def test_logged_out_session_is_401(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert (await gw.call("DELETE", "/sessions", session=s)).status == 204
    assert_error(await post(gw, "json", VALID_JOB, s), 401, "unauthorized")


async def test_session_opened_by_another_client_is_401(gw: Gateway) -> None:
    s = await gw.session("alice", client="mobile")
    assert_error(await post(gw, "json", VALID_JOB, s, client=gw.world.clients["web"]), 401, "unauthorized")
    r = await post(gw, "json", VALID_JOB, s, client=gw.world.clients["mobile"])
    assert r.status == 201, r


async def test_disabled_user_is_401_with_a_session_opened_before(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert (await post(gw, "json", VALID_JOB, s)).status == 201  # the session's check is cached now
    await gw.write(accounts.set_disabled, "alice", True)
    assert_error(await post(gw, "json", VALID_JOB, s), 401, "unauthorized")


# ----------------------------------------------------------------------------- 403

@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_processor_cannot_create_a_job(gw: Gateway, kind: str) -> None:
    s = await gw.session("pat")
    assert_error(await post(gw, kind, VALID_JOB, s), 403, "forbidden")
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


# ----------------------------------------------------------------------------- the order of the checks

async def test_order_406_before_415_and_missing_tokens(gw: Gateway) -> None:
    r = await gw.call("POST", "/jobs", accept=None, client=None, data=b"x", content_type="text/plain")
    assert_error(r, 406)


async def test_order_415_before_missing_tokens(gw: Gateway) -> None:
    r = await gw.call("POST", "/jobs", client=None, data=b"x", content_type="text/plain")
    assert_error(r, 415)


async def test_order_missing_header_before_a_broken_body(gw: Gateway) -> None:
    r = await gw.call("POST", "/jobs", data=BROKEN_JSON, content_type=JSON)
    assert_error(r, 400, "missing_header", headerName="X-Session-Token")


async def test_order_401_before_a_broken_body(gw: Gateway) -> None:
    r = await gw.call("POST", "/jobs", session=nonce(), data=BROKEN_JSON, content_type=JSON)
    assert_error(r, 401)


async def test_order_403_before_a_broken_body(gw: Gateway) -> None:
    s = await gw.session("pat")
    assert_error(await gw.call("POST", "/jobs", session=s, data=BROKEN_JSON, content_type=JSON), 403)


async def test_order_name_required_before_missing_description_and_bad_values(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert_error(await post(gw, "json", {"isTest": "yes", "deadlineId": "x"}, s), 400, "name_required")


async def test_order_missing_parameter_before_invalid_parameter(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert_error(await post(gw, "json", {"name": "n", "isTest": "yes", "tags": 5}, s), 400,
                 "missing_parameter", parameterName="description")


# ----------------------------------------------------------------------------- invalid_json

@pytest.mark.parametrize("data", [BROKEN_JSON, b"[]", b'["name", "description"]', b'"a string"', b"5", b"null",
                                  b"", b"{'name': 'single quotes'}"],
                         ids=["broken", "empty-array", "array", "string", "number", "null", "empty", "quotes"])
async def test_json_body_that_is_not_an_object_is_invalid_json(gw: Gateway, data: bytes) -> None:
    s = await gw.session("alice")
    r = await gw.call("POST", "/jobs", session=s, data=data, content_type=JSON)
    assert_error(r, 400, "invalid_json")


@pytest.mark.parametrize("content_type", [JSON, FORM])
async def test_body_that_is_not_utf8_is_invalid_json(gw: Gateway, content_type: str) -> None:
    s = await gw.session("alice")
    data = (b'{"name": "\xff\xfe", "description": "d"}' if content_type == JSON
            else b"name=\xff\xfe&description=d")
    assert_error(await gw.call("POST", "/jobs", session=s, data=data, content_type=content_type), 400,
                 "invalid_json")


async def test_form_with_percent_escapes_that_are_not_utf8_is_invalid_json(gw: Gateway) -> None:
    s = await gw.session("alice")
    r = await gw.call("POST", "/jobs", session=s, data=b"name=%FF%FE&description=d", content_type=FORM)
    assert_error(r, 400, "invalid_json")


# ----------------------------------------------------------------------------- name_required, missing_parameter

NAME_REQUIRED = {"id": 5, "target": "developer", "code": "name_required", "message": "Name is required.",
                 "_type": "ErrorResponseBody"}


@pytest.mark.parametrize(("kind", "fields"), [
    ("json", {"description": "no name"}),
    ("json", {"name": "", "description": "empty name"}),
    ("json", {"name": None, "description": "null name"}),
    ("form", {"description": "no name"}),
    ("form", {"name": "", "description": "empty name"}),
], ids=["json-missing", "json-empty", "json-null", "form-missing", "form-empty"])
async def test_missing_or_empty_name_is_the_custom_error_5(gw: Gateway, kind: str, fields: dict[str, Any]) -> None:
    s = await gw.session("alice")
    r = await post(gw, kind, fields, s)
    assert_error(r, 400)
    assert r.json() == NAME_REQUIRED


@pytest.mark.parametrize(("kind", "fields"), [
    ("json", {"name": "no description"}),
    ("json", {"name": "null description", "description": None}),
    ("form", {"name": "no description"}),
], ids=["json-missing", "json-null", "form-missing"])
async def test_missing_description_is_missing_parameter(gw: Gateway, kind: str, fields: dict[str, Any]) -> None:
    s = await gw.session("alice")
    body = assert_error(await post(gw, kind, fields, s), 400, "missing_parameter", parameterName="description")
    assert "description" in body["message"]


# ----------------------------------------------------------------------------- invalid_parameter

JSON_INVALID = [
    ("isTest", "yes"), ("isTest", "true"), ("isTest", 1), ("isTest", [True]),
    ("deadlineId", "x"), ("deadlineId", True), ("deadlineId", "1"), ("deadlineId", 1.5), ("deadlineId", -1),
    ("deadlineId", 2**63), ("deadlineId", 987654),
    ("specificationKey", False), ("specificationKey", "432"), ("specificationKey", 987654),
    ("name", 5), ("name", ["Job"]), ("name", "n" * 256),
    ("description", 5), ("description", "d" * 4001),
    ("invoiceReference", 5), ("invoiceReference", "i" * 256),
    ("tags", 5), ("tags", "a,b"), ("tags", ["a", 1]), ("tags", {"a": "b"}), ("tags", [""]),
    ("tags", ["t" * 101]), ("tags", [f"t{i}" for i in range(51)]),
]


@pytest.mark.parametrize(("field", "value"), JSON_INVALID,
                         ids=[f"{f}-{str(v)[:12]}" for f, v in JSON_INVALID])
async def test_json_wrong_type_length_or_reference_is_invalid_parameter(gw: Gateway, field: str,
                                                                        value: Any) -> None:
    s = await gw.session("alice")
    r = await post(gw, "json", {**VALID_JOB, field: value}, s)
    body = assert_error(r, 400, "invalid_parameter", parameterName=field)
    assert field in body["message"]
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


FORM_INVALID = [
    ("isTest", "yes"), ("isTest", "1"), ("isTest", "on"),
    ("deadlineId", "x"), ("deadlineId", "-1"), ("deadlineId", "1.5"), ("deadlineId", "+1"), ("deadlineId", "\u0661"),
    ("deadlineId", "987654"), ("specificationKey", "abc"), ("specificationKey", "987654"),
    ("name", "n" * 256), ("description", "d" * 4001), ("invoiceReference", "i" * 256),
]


@pytest.mark.parametrize(("field", "value"), FORM_INVALID, ids=[f"{f}-{v[:12]}" for f, v in FORM_INVALID])
async def test_form_bad_value_is_invalid_parameter(gw: Gateway, field: str, value: str) -> None:
    s = await gw.session("alice")
    r = await post(gw, "form", {**VALID_JOB, field: value}, s)
    assert_error(r, 400, "invalid_parameter", parameterName=field)


async def test_form_field_given_twice_is_invalid_parameter(gw: Gateway) -> None:
    s = await gw.session("alice")
    r = await gw.call("POST", "/jobs", session=s, form=[("name", "a"), ("name", "b"), ("description", "d")])
    assert_error(r, 400, "invalid_parameter", parameterName="name")


@pytest.mark.parametrize(("field", "value"), [("name", "n" * 255), ("name", "é" * 255),
                                              ("description", "d" * 4000), ("invoiceReference", "i" * 255)])
@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_strings_at_their_limit_are_accepted(gw: Gateway, kind: str, field: str, value: str) -> None:
    s = await gw.session("alice")
    r = await post(gw, kind, {**VALID_JOB, field: value}, s)
    assert r.status == 201, r
    assert r.json()[field] == value


# ----------------------------------------------------------------------------- 201: accepted bodies

async def test_json_minimal_body_gets_the_defaults(gw: Gateway) -> None:
    s = await gw.session("alice")
    j = await gw.create_job(s)
    assert j["tags"] == []
    assert j["invoiceReference"] is None
    assert j["isTest"] is False
    assert j["deadlineId"] is None and j["specificationKey"] is None


async def test_json_full_body_is_echoed(gw: Gateway) -> None:
    s = await gw.session("alice")
    body = {**VALID_JOB, "invoiceReference": "Pay after all fruits are eaten", "isTest": True,
            "deadlineId": gw.world.deadline["id"], "specificationKey": 432,
            "tags": ["Apple", "Banana", "Cucumber"]}
    j = await gw.create_job(s, **body)
    assert {k: j[k] for k in body} == body


async def test_json_nulls_for_optional_fields_mean_absent(gw: Gateway) -> None:
    s = await gw.session("alice")
    j = await gw.create_job(s, invoiceReference=None, isTest=None, deadlineId=None, specificationKey=None,
                            tags=None)
    assert (j["invoiceReference"], j["isTest"], j["deadlineId"], j["specificationKey"], j["tags"]) == (
        None, False, None, None, [])


@pytest.mark.parametrize(("form_value", "expected"), [("true", True), ("false", False), ("TRUE", True),
                                                      ("False", False), ("", False)])
async def test_form_booleans(gw: Gateway, form_value: str, expected: bool) -> None:
    s = await gw.session("alice")
    r = await post(gw, "form", {**VALID_JOB, "isTest": form_value}, s)
    assert r.status == 201, r
    assert r.json()["isTest"] is expected


async def test_form_integers_are_digits(gw: Gateway) -> None:
    s = await gw.session("alice")
    r = await post(gw, "form", {**VALID_JOB, "deadlineId": str(gw.world.deadline["id"]),
                                "specificationKey": "432"}, s)
    assert r.status == 201, r
    assert (r.json()["deadlineId"], r.json()["specificationKey"]) == (gw.world.deadline["id"], 432)


@pytest.mark.parametrize(("pairs", "expected"), [
    ([("tags", "a,b")], ["a", "b"]),
    ([("tags", " Apple , Banana,,Cucumber ")], ["Apple", "Banana", "Cucumber"]),
    ([("tags", "a"), ("tags", "b,c")], ["a", "b", "c"]),
    ([("tags", "")], []),
    ([], []),
], ids=["two", "spaces-and-empties", "repeated", "empty", "absent"])
async def test_form_tags_are_comma_separated(gw: Gateway, pairs: list[tuple[str, str]],
                                             expected: list[str]) -> None:
    s = await gw.session("alice")
    r = await gw.call("POST", "/jobs", session=s, form=[*VALID_JOB.items(), *pairs])
    assert r.status == 201, r
    assert r.json()["tags"] == expected
    got = await gw.call("GET", f"/jobs/{r.json()['id']}", session=s)
    assert got.json()["tags"] == expected  # stored, not only echoed


async def test_unicode_survives_json_and_form(gw: Gateway) -> None:
    s = await gw.session("alice")
    for kind in BODY_KINDS:
        r = await post(gw, kind, {"name": "Früchte 🍎", "description": "Äpfel & Birnen = 100%"}, s)
        assert r.status == 201, r
        assert (r.json()["name"], r.json()["description"]) == ("Früchte 🍎", "Äpfel & Birnen = 100%")


# ----------------------------------------------------------------------------- 201: shape, URLs, disk

async def test_201_body_shape_and_location(gw: Gateway) -> None:
    s = await gw.session("alice")
    before = datetime.now(UTC).replace(microsecond=0)
    r = await gw.post_job(s, {**VALID_JOB, "tags": ["Apple"]})
    assert r.status == 201, r
    assert r.content_type == JSON
    j = r.json()
    assert type(j["id"]) is int and j["id"] > 0
    assert (j["name"], j["description"], j["tags"]) == (VALID_JOB["name"], VALID_JOB["description"], ["Apple"])
    assert j["status"] == "CJ_PREPROCESS"
    assert j["_type"] == "CreateJobResponseBody"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", j["createdDate"]), j["createdDate"]
    created = datetime.fromisoformat(j["createdDate"].replace("Z", "+00:00"))
    assert before <= created <= datetime.now(UTC)
    for section, keys in (("upload", ("ftpUrl", "postUrl", "ftpPassword")), ("download", ("ftpUrl", "getUrl"))):
        for k in keys:
            assert isinstance(j[section][k], str) and j[section][k], (section, k)
    assert r.headers["Location"] == f"/jobs/{j['id']}"
    got = await gw.call("GET", r.headers["Location"], session=s)
    assert got.status == 200 and got.json()["id"] == j["id"]


async def test_ids_are_distinct_integers(gw: Gateway) -> None:
    s = await gw.session("alice")
    ids = [(await gw.create_job(s))["id"] for _ in range(3)]
    assert len(set(ids)) == 3 and ids == sorted(ids)


async def test_ftp_urls_name_the_job_folders_that_exist_on_disk(gw: Gateway) -> None:
    s = await gw.session("alice")
    j = await gw.create_job(s)
    day = j["createdDate"][:10].replace("-", "")
    for key, kind in ((("upload", "ftpUrl"), "ORIGINAL"), (("download", "ftpUrl"), "CLIPPED")):
        url = j[key[0]][key[1]]
        assert url == f"ftp://127.0.0.1:{gw.ftp_port}/{day}/{j['id']}/{kind}/"
        folder = gw.storage_root / urlsplit(url).path.strip("/")
        assert folder.is_dir(), folder
        assert folder == gw.job_dir(j, kind)
        assert list(folder.iterdir()) == []


async def test_post_url_carries_a_per_job_upload_key_not_the_account_id(gw: Gateway) -> None:
    s = await gw.session("alice")
    j1, j2 = await gw.create_job(s), await gw.create_job(s)
    keys = []
    for j in (j1, j2):
        u = urlsplit(j["upload"]["postUrl"])
        q = parse_qs(u.query)
        assert f"{u.scheme}://{u.netloc}" == gw.public_url
        assert u.path == "/upload/UploadFile.ashx"
        assert sorted(q) == ["accountID", "jobID"]
        assert q["jobID"] == [str(j["id"])]
        key = q["accountID"][0]
        assert key not in (gw.world.account_id("alice"), j["accountId"], s)
        assert len(token_bytes(key)) * 8 >= 128, key
        keys.append(key)
    assert keys[0] != keys[1]


async def test_get_url_carries_a_download_token_not_the_session_token(gw: Gateway) -> None:
    s = await gw.session("alice")
    r = await gw.post_job(s)
    j = r.json()
    u = urlsplit(j["download"]["getUrl"])
    q = parse_qs(u.query)
    assert f"{u.scheme}://{u.netloc}" == gw.public_url
    assert u.path == "/ajax/DownloadZip.ashx"
    assert sorted(q) == ["centraljobid", "sessionID"]
    assert q["centraljobid"] == [str(j["id"])]
    token = q["sessionID"][0]
    assert token and token != s
    assert s not in r.text
    assert gw.world.clients["web"] not in r.text
    who = gw.read(accounts.check_download_token, gw.secret, j["id"], token)
    assert who.login == "alice"


async def test_public_url_and_ftp_public_host_are_the_bases_of_the_urls(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"http.public_url": "https://files.example.com/",
                                "ftp.public_host": "ftp.example.com"})
    s = await gw.session("alice")
    j = await gw.create_job(s)
    assert j["upload"]["postUrl"].startswith("https://files.example.com/upload/UploadFile.ashx?jobID=")
    assert j["download"]["getUrl"].startswith("https://files.example.com/ajax/DownloadZip.ashx?centraljobid=")
    assert j["upload"]["ftpUrl"].startswith(f"ftp://ftp.example.com:{gw.ftp_port}/")


def test_ftp_url_leaves_out_port_21() -> None:
    assert Addresses("http://h", "ftp.example.com", 21).ftp_base() == "ftp://ftp.example.com"
    assert Addresses("http://h", "ftp.example.com", 2121).ftp_base() == "ftp://ftp.example.com:2121"


async def test_ftp_password_is_shown_once_and_never_stored_in_clear(gw: Gateway) -> None:
    s = await gw.session("alice")
    marker = f"marker-{os.urandom(8).hex()}"
    j = await gw.create_job(s, name=marker)
    password = j["upload"]["ftpPassword"]
    assert len(token_bytes(password)) * 8 >= 256
    again = await gw.call("GET", f"/jobs/{j['id']}", session=s)
    listed = await gw.call("GET", "/jobs", session=s)
    assert again.status == 200 and listed.status == 200
    assert password not in again.text and password not in listed.text
    assert "ftpPassword" not in again.json()["upload"]
    stored = b"".join(p.read_bytes() for p in gw.db_path.parent.iterdir() if p.name.startswith(gw.db_path.name))
    assert marker.encode() in stored  # the job's row is in these bytes
    secrets_in_clear = {"ftpPassword": password, "session": s, "client token": gw.world.clients["web"],
                        "user password": gw.world.passwords["alice"]}
    for what, value in secrets_in_clear.items():
        assert value.encode() not in stored, f"{what} is stored in clear"


async def test_each_job_gets_its_own_ftp_password(gw: Gateway) -> None:
    s = await gw.session("alice")
    a, b = await gw.create_job(s), await gw.create_job(s)
    assert a["upload"]["ftpPassword"] != b["upload"]["ftpPassword"]


async def test_a_job_belongs_to_the_account_of_its_creator(gw: Gateway) -> None:
    s = await gw.session("bob")
    j = await gw.create_job(s)
    assert j["accountId"] == gw.world.account_id("bob")
    rows = gw.query("select account_id from jobs where id = ?", [j["id"]])
    assert rows == [{"account_id": gw.world.account_id("bob")}]


async def test_a_refused_request_creates_no_job_and_no_folder(gw: Gateway) -> None:
    s = await gw.session("alice")
    assert (await post(gw, "json", {**VALID_JOB, "deadlineId": 987654}, s)).status == 400
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0
    assert [p.name for p in gw.storage_root.iterdir() if not p.name.startswith(".")] == []


async def test_no_job_is_left_without_its_folders(gw: Gateway) -> None:
    """The folders cannot be made (a file stands where today's day folder belongs): the answer is a 500
    ErrorResponseBody, and neither the job nor its first status event stays behind. Once the disk is
    fixed, the next job is made with both folders."""
    s = await gw.session("alice")
    days = {time.strftime("%Y%m%d", time.gmtime(time.time() + dt)) for dt in (0, 60)}  # midnight UTC
    blockers = [gw.storage_root / day for day in days]
    for b in blockers:
        b.write_bytes(b"not a folder")
    try:
        assert_error(await post(gw, "json", VALID_JOB, s), 500, "internal_error")
        assert gw.query("select count(*) as n from jobs")[0]["n"] == 0
        assert gw.query("select count(*) as n from job_events")[0]["n"] == 0
    finally:
        for b in blockers:
            b.unlink()
    j = await gw.create_job(s)
    assert gw.job_dir(j, "ORIGINAL").is_dir() and gw.job_dir(j, "CLIPPED").is_dir()
