"""POST /sessions (log in through an API client), DELETE /sessions (log out), and what dies with a session."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlite_utils
from conftest import JSON, Gateway, GatewayFactory, assert_error, token_bytes

from gateway import accounts, notify
from gateway.db import open_db
from gateway.errors import Unauthorized


def download_token(job: dict[str, object]) -> str:
    return parse_qs(urlsplit(str(job["download"]["getUrl"])).query)["sessionID"][0]  # type: ignore[index]


# ----------------------------------------------------------------------------- POST /sessions

async def test_login_answers_201_with_token_expiry_and_type(gw: Gateway) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    r = await gw.login_reply("alice")
    assert r.status == 201, r
    assert r.content_type == JSON
    body = r.json()
    assert set(body) == {"token", "expiresAt", "_type"}
    assert body["_type"] == "CreateSessionResponseBody"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expiresAt"]), body
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    lifetime = timedelta(seconds=gw.config.sessions.lifetime)
    assert before + lifetime <= expires <= datetime.now(UTC) + lifetime
    assert gw.world.passwords["alice"] not in r.text


async def test_session_token_is_random_with_at_least_256_bits(gw: Gateway) -> None:
    tokens = {await gw.login("alice") for _ in range(3)}
    assert len(tokens) == 3
    for t in tokens:
        assert len(token_bytes(t)) * 8 >= 256, t


async def test_session_token_opens_the_api(gw: Gateway) -> None:
    s = await gw.login("alice")
    r = await gw.call("GET", "/jobs", session=s)
    assert r.status == 200, r


async def test_login_with_a_form_body(gw: Gateway) -> None:
    r = await gw.call("POST", "/sessions", form={"login": "alice", "password": gw.world.passwords["alice"]})
    assert r.status == 201, r
    assert (await gw.call("GET", "/jobs", session=r.json()["token"])).status == 200


async def test_a_processor_logs_in_too(gw: Gateway) -> None:
    assert (await gw.login_reply("pat")).status == 201


async def test_lifetime_comes_from_the_config(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"sessions.lifetime": 3600})
    body = (await gw.login_reply("alice")).json()
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)).total_seconds() - 3600) < 5


async def test_wrong_password_is_401(gw: Gateway) -> None:
    assert_error(await gw.login_reply("alice", "not-the-password"), 401, "unauthorized")


async def test_unknown_login_is_401_exactly_like_a_wrong_password(gw: Gateway) -> None:
    wrong = assert_error(await gw.login_reply("alice", "not-the-password"), 401)
    unknown = await gw.call("POST", "/sessions", json_body={"login": "nobody", "password": "whatever-pw"})
    assert assert_error(unknown, 401) == wrong


async def test_disabled_user_cannot_log_in_until_enabled(gw: Gateway) -> None:
    await gw.write(accounts.set_disabled, "alice", True)
    assert_error(await gw.login_reply("alice"), 401, "unauthorized")
    await gw.write(accounts.set_disabled, "alice", False)
    assert (await gw.login_reply("alice")).status == 201


@pytest.mark.parametrize(("body", "name"), [
    ({"password": "x"}, "login"), ({"login": "", "password": "x"}, "login"),
    ({"login": "alice"}, "password"), ({"login": "alice", "password": ""}, "password"), ({}, "login"),
])
async def test_missing_login_or_password_is_400_missing_parameter(gw: Gateway, body: dict[str, str],
                                                                  name: str) -> None:
    r = await gw.call("POST", "/sessions", json_body=body)
    assert_error(r, 400, "missing_parameter", parameterName=name)


@pytest.mark.parametrize(("body", "name"), [({"login": 5, "password": "x"}, "login"),
                                            ({"login": "alice", "password": ["x"]}, "password"),
                                            ({"login": "a" * 1025, "password": "x"}, "login")])
async def test_login_or_password_of_the_wrong_type_is_400_invalid_parameter(gw: Gateway, body: dict[str, object],
                                                                            name: str) -> None:
    assert_error(await gw.call("POST", "/sessions", json_body=body), 400, "invalid_parameter", parameterName=name)


async def test_login_without_client_token_is_400_missing_header(gw: Gateway) -> None:
    r = await gw.call("POST", "/sessions", client=None,
                      json_body={"login": "alice", "password": gw.world.passwords["alice"]})
    assert_error(r, 400, "missing_header", headerName="X-Client-Token")


async def test_login_through_an_unknown_client_is_401(gw: Gateway) -> None:
    assert_error(await gw.login_reply("alice", client=accounts.new_token()), 401, "unauthorized")


async def test_login_through_a_revoked_client_is_401(gw: Gateway) -> None:
    await gw.write(accounts.revoke_client, "mobile")
    assert_error(await gw.login_reply("alice", client="mobile"), 401, "unauthorized")
    assert (await gw.login_reply("alice", client="web")).status == 201


async def test_login_negotiation_and_body_errors(gw: Gateway) -> None:
    creds = {"login": "alice", "password": gw.world.passwords["alice"]}
    assert_error(await gw.call("POST", "/sessions", json_body=creds, accept=None), 406, "not_acceptable")
    assert_error(await gw.call("POST", "/sessions", json_body=creds, accept="*/*"), 406, "not_acceptable")
    assert_error(await gw.call("POST", "/sessions", data=b"login=alice", content_type="text/plain"), 415)
    assert_error(await gw.call("POST", "/sessions", data=b'{"login": ', content_type=JSON), 400, "invalid_json")


async def test_repeated_failures_from_one_address_are_refused_for_a_while(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"security.login_failures": 3})
    for _ in range(2):
        assert_error(await gw.login_reply("alice", "wrong-password"), 401)
    assert_error(await gw.login_reply("alice", "wrong-password"), 429, "too_many_requests")
    assert_error(await gw.login_reply("alice"), 429, "too_many_requests")  # even the right password


# ----------------------------------------------------------------------------- DELETE /sessions

async def test_logout_is_204_and_the_token_is_dead(gw: Gateway) -> None:
    s = await gw.login("alice")
    other = await gw.login("alice")
    r = await gw.call("DELETE", "/sessions", session=s)
    assert r.status == 204, r
    assert r.body == b""
    assert_error(await gw.call("GET", "/jobs", session=s), 401, "unauthorized")
    assert_error(await gw.call("DELETE", "/sessions", session=s), 401, "unauthorized")
    assert (await gw.call("GET", "/jobs", session=other)).status == 200  # only that session ended


async def test_logout_needs_both_headers(gw: Gateway) -> None:
    s = await gw.login("alice")
    assert_error(await gw.call("DELETE", "/sessions"), 400, "missing_header", headerName="X-Session-Token")
    assert_error(await gw.call("DELETE", "/sessions", session=s, client=None), 400, "missing_header",
                 headerName="X-Client-Token")
    assert (await gw.call("GET", "/jobs", session=s)).status == 200


async def test_logout_through_another_client_is_401_and_ends_nothing(gw: Gateway) -> None:
    s = await gw.login("alice")
    assert_error(await gw.call("DELETE", "/sessions", session=s, client=gw.world.clients["mobile"]), 401)
    assert (await gw.call("GET", "/jobs", session=s)).status == 200


async def test_session_expires_after_its_lifetime(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"sessions.lifetime": 1.0})
    s = await gw.login("alice")
    assert (await gw.call("GET", "/jobs", session=s)).status == 200
    await asyncio.sleep(1.1)
    assert_error(await gw.call("GET", "/jobs", session=s), 401, "unauthorized")
    assert_error(await gw.call("DELETE", "/sessions", session=s), 401)


# ----------------------------------------------------------------------------- download tokens die with the session

async def test_download_token_dies_with_the_session(gw: Gateway) -> None:
    s = await gw.login("alice")
    job = await gw.create_job(s)
    token = download_token(job)
    assert gw.read(accounts.check_download_token, gw.secret, job["id"], token).login == "alice"
    fresh = download_token((await gw.call("GET", f"/jobs/{job['id']}", session=s)).json())
    assert gw.read(accounts.check_download_token, gw.secret, job["id"], fresh).login == "alice"
    assert (await gw.call("DELETE", "/sessions", session=s)).status == 204
    for t in (token, fresh):
        with pytest.raises(Unauthorized):
            gw.read(accounts.check_download_token, gw.secret, job["id"], t)


async def test_download_token_dies_when_the_user_is_disabled(gw: Gateway) -> None:
    s = await gw.login("alice")
    job = await gw.create_job(s)
    await gw.write(accounts.set_disabled, "alice", True)
    with pytest.raises(Unauthorized):
        gw.read(accounts.check_download_token, gw.secret, job["id"], download_token(job))


async def test_download_token_is_scoped_to_its_job(gw: Gateway) -> None:
    s = await gw.login("alice")
    a, b = await gw.create_job(s), await gw.create_job(s)
    token = download_token(a)
    with pytest.raises(Unauthorized):
        gw.read(accounts.check_download_token, gw.secret, b["id"], token)
    sid, _, mac = token.partition("-")
    for forged in (f"{sid}-{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}", f"{int(sid) + 1}-{mac}", mac, "", s):
        with pytest.raises(Unauthorized):
            gw.read(accounts.check_download_token, gw.secret, a["id"], forged)


# ----------------------------------------------------------------------------- the cache of session checks

def _one_session(tmp_path: Path, lifetime: float = 3600) -> tuple[sqlite_utils.Database, str, str]:
    """A real database with alice's session opened through client web: (db, client token, session token)."""
    db = open_db(tmp_path / "cache.db")
    acct = accounts.create_account(db, "acme")
    user = accounts.create_user(db, "alice", accounts.hash_password("pw-long-enough"), "customer", acct["id"])
    client = accounts.create_client(db, "web")
    accounts.create_client(db, "mobile")
    session = accounts.create_session(db, user["id"], client["id"], lifetime)
    return db, client["token"], session["token"]


def test_a_cached_session_check_holds_only_until_logins_change(tmp_path: Path) -> None:
    """What makes the cache safe: every change that can end a login moves LOGINS_CHANGED after its commit
    (the writer, or the server on the admin CLI's word); an entry seen before that is dropped."""
    db, client, session = _one_session(tmp_path)
    cache = accounts.SessionCache(ttl=60)
    assert cache.authenticate(db, client, session).login == "alice"
    db.execute("update users set disabled = 1 where login = 'alice'")  # behind the gateway's back
    assert cache.authenticate(db, client, session).login == "alice"  # not read again yet: cached
    accounts.LOGINS_CHANGED.bump()
    with pytest.raises(Unauthorized):
        cache.authenticate(db, client, session)
    with pytest.raises(Unauthorized):  # a refusal is never cached
        cache.authenticate(db, client, session)


def test_a_change_behind_the_gateways_back_counts_within_the_ttl(tmp_path: Path) -> None:
    db, client, session = _one_session(tmp_path)
    cache = accounts.SessionCache(ttl=0.2)
    assert cache.authenticate(db, client, session).login == "alice"
    db.execute("update sessions set ended_at = '2026-01-01T00:00:00Z'")
    time.sleep(0.25)
    with pytest.raises(Unauthorized):
        cache.authenticate(db, client, session)


def test_a_cached_session_still_expires_on_time(tmp_path: Path) -> None:
    db, client, session = _one_session(tmp_path, lifetime=0.3)
    cache = accounts.SessionCache(ttl=60)
    assert cache.authenticate(db, client, session).login == "alice"
    time.sleep(0.35)
    with pytest.raises(Unauthorized):
        cache.authenticate(db, client, session)


def test_a_cached_session_answers_only_with_its_own_client(tmp_path: Path) -> None:
    db, client, session = _one_session(tmp_path)
    mobile = accounts.create_client(db, "tablet")["token"]
    cache = accounts.SessionCache(ttl=60)
    assert cache.authenticate(db, client, session).login == "alice"
    for wrong in (mobile, client + "x", ""):
        with pytest.raises(Unauthorized):
            cache.authenticate(db, wrong, session)
    assert cache.authenticate(db, client, session).login == "alice"


def test_the_cache_stays_bounded(tmp_path: Path) -> None:
    db, client, _ = _one_session(tmp_path)
    user = accounts.get_user(db, "alice")
    assert user is not None
    web_id = db.execute("select id from clients where name = 'web'").fetchone()[0]
    cache = accounts.SessionCache(ttl=60, max_entries=5)
    tokens = [accounts.create_session(db, user["id"], web_id, 3600)["token"] for _ in range(12)]
    for t in tokens:
        assert cache.authenticate(db, client, t).login == "alice"
    assert len(cache) <= 5
    assert all(cache.authenticate(db, client, t).login == "alice" for t in tokens)  # evicted ones are read again


async def test_a_disable_written_behind_the_gateways_back_ends_the_session_within_a_second(gw: Gateway) -> None:
    s = await gw.login("alice")
    assert (await gw.call("GET", "/jobs", session=s)).status == 200  # cached from here on
    with sqlite3.connect(gw.db_path) as conn:  # not through the gateway or its CLI: nobody tells the server
        conn.execute("update users set disabled = 1 where login = 'alice'")
    changed = time.monotonic()
    while (await gw.call("GET", "/jobs", session=s)).status == 200:
        assert time.monotonic() - changed < 1.5, "the disabled user's session still works"
        await asyncio.sleep(0.05)
    assert_error(await gw.call("GET", "/jobs", session=s), 401, "unauthorized")


async def test_the_cli_returns_only_once_the_running_server_has_heard_it(gw: Gateway, tmp_path: Path) -> None:
    before = accounts.LOGINS_CHANGED.value
    assert notify.tell_server(gw.db_path) is True
    assert accounts.LOGINS_CHANGED.value != before
    assert notify.tell_server(tmp_path / "no-server-here.db") is None
    with pytest.raises(OSError):  # a second server on the same database cannot listen (it would not cache)
        notify.Listener(gw.db_path)
