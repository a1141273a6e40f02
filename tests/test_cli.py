"""The admin CLI: every command prints one JSON object; errors exit non-zero with a message, no traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, Gateway, GatewayFactory, assert_error, token_bytes

from gateway import accounts
from gateway.cli import main
from gateway.db import open_db

GATEWAY_BIN = Path(sys.executable).parent / "gateway"
PW = "a-long-enough-password"


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def obj(self) -> dict[str, Any]:
        """The one JSON object printed on stdout (and nothing else)."""
        assert self.rc == 0, self
        assert self.err == "" or "Traceback" not in self.err, self
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one line of JSON, got {self.out!r}"
        value = json.loads(lines[0])
        assert isinstance(value, dict), value
        return value

    def failed(self, *words: str) -> str:
        """A clean failure: non-zero, a one-line message on stderr naming the problem, nothing on stdout."""
        assert self.rc != 0, self
        assert self.out == "", self
        assert "Traceback" not in self.err, self
        message = self.err.strip()
        assert message.startswith("gateway: ") and "\n" not in message, self
        for w in words:
            assert w in message, f"{w!r} not in {message!r}"
        return message


Cli = Callable[..., Run]


@pytest.fixture
def cli(config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run gateway.cli.main in this process against a config in tmp_path (or `config=` another)."""
    default = config_factory.write()

    def run(*args: str, stdin: str = "", config: Path | None = None) -> Run:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        rc = main(["--config", str(config or default), *args])
        out, err = capsys.readouterr()
        return Run(rc, out, err)

    run.config_path = default  # type: ignore[attr-defined]
    return run


def run_process(config: Path, *args: str, stdin: str = "", module: bool = True) -> Run:
    """The real command line in a child process."""
    cmd = [sys.executable, "-m", "gateway"] if module else [str(GATEWAY_BIN)]
    p = subprocess.run([*cmd, "--config", str(config), *args], input=stdin, capture_output=True, text=True,
                       timeout=60, check=False)
    return Run(p.returncode, p.stdout, p.stderr)


# ----------------------------------------------------------------------------- the real entry points

def test_python_m_gateway_and_the_console_script_print_one_json_object(config_factory: ConfigFactory) -> None:
    path = config_factory.write()
    acme = run_process(path, "account", "create", "acme").obj()
    assert set(acme) == {"id", "name", "callbackSecret"} and acme["name"] == "acme"
    user = run_process(path, "user", "create", "--login", "alice", "--password-stdin", "--account", "acme",
                       stdin=PW + "\n", module=False).obj()
    assert user == {"id": user["id"], "login": "alice", "role": "customer", "accountId": acme["id"],
                    "disabled": False}


@pytest.mark.parametrize(("args", "stdin", "words"), [
    (("user", "create", "--login", "alice", "--password-stdin", "--account", "acme"), PW, ("alice", "exists")),
    (("user", "create", "--login", "zed", "--password-stdin", "--account", "initech"), PW, ("initech",)),
    (("user", "create", "--login", "zed", "--password-stdin", "--account", "acme"), "short", ("password", "8")),
    (("user", "create", "--login", "bad login", "--password-stdin", "--account", "acme"), PW, ("login",)),
], ids=["duplicate-login", "unknown-account", "short-password", "bad-login-name"])
def test_errors_exit_non_zero_with_a_message_and_no_traceback(config_factory: ConfigFactory, args: tuple[str, ...],
                                                              stdin: str, words: tuple[str, ...]) -> None:
    cf = config_factory()
    db = open_db(cf.config.db_path)
    try:
        accounts.create_account(db, "acme")
        accounts.create_user(db, "alice", "scrypt$x", "customer", "acme")
    finally:
        db.close()
    run_process(cf.path, *args, stdin=stdin).failed(*words)
    db = open_db(cf.config.db_path)
    try:
        assert [r["login"] for r in db.query("select login from users")] == ["alice"]
    finally:
        db.close()


# ----------------------------------------------------------------------------- each command

def test_account_create_and_rotate_secret(cli: Cli) -> None:
    acme = cli("account", "create", "acme").obj()
    assert uuid.UUID(acme["id"]) and acme["name"] == "acme"
    assert len(token_bytes(acme["callbackSecret"])) * 8 >= 256
    rotated = cli("account", "rotate-secret", "acme").obj()
    assert (rotated["id"], rotated["name"]) == (acme["id"], "acme")
    assert rotated["callbackSecret"] != acme["callbackSecret"]
    assert cli("account", "rotate-secret", acme["id"]).obj()["callbackSecret"] not in (
        acme["callbackSecret"], rotated["callbackSecret"])


def test_account_ids_are_random_uuids(cli: Cli) -> None:
    a, b = cli("account", "create", "a").obj(), cli("account", "create", "b").obj()
    assert uuid.UUID(a["id"]).version == 4 and a["id"] != b["id"]


def test_user_create_customer_and_processor(cli: Cli) -> None:
    acme = cli("account", "create", "acme").obj()
    alice = cli("user", "create", "--login", "alice", "--password-stdin", "--account", "acme", stdin=PW).obj()
    assert alice == {"id": alice["id"], "login": "alice", "role": "customer", "accountId": acme["id"],
                     "disabled": False}
    by_id = cli("user", "create", "--login", "al2", "--password-stdin", "--account", acme["id"], stdin=PW).obj()
    assert by_id["accountId"] == acme["id"]
    pat = cli("user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=PW).obj()
    assert (pat["role"], pat["accountId"]) == ("processor", None)


def test_client_create_and_revoke(cli: Cli) -> None:
    web = cli("client", "create", "web").obj()
    assert web["name"] == "web" and len(token_bytes(web["token"])) * 8 >= 256
    other = cli("client", "create", "mobile").obj()
    assert other["token"] != web["token"]
    revoked = cli("client", "revoke", "web").obj()
    assert revoked["name"] == "web" and revoked["revokedAt"].endswith("Z")
    assert web["token"] not in json.dumps(revoked)


def test_deadline_and_specification_create(cli: Cli) -> None:
    d = cli("deadline", "create", "Tomorrow", "--hours", "24").obj()
    assert type(d["id"]) is int and (d["name"], d["hours"]) == ("Tomorrow", 24)
    assert cli("deadline", "create", "Next week", "--hours", "168").obj()["id"] != d["id"]
    assert cli("specification", "create", "--key", "432", "Clipping path").obj() == {"key": 432,
                                                                                      "name": "Clipping path"}


@pytest.mark.parametrize(("setup", "args", "stdin", "words"), [
    ([("account", "create", "acme")], ("account", "create", "acme"), "", ("acme", "exists")),
    ([], ("account", "create", "   "), "", ("account name",)),
    ([], ("account", "rotate-secret", "nobody"), "", ("nobody",)),
    ([("client", "create", "web")], ("client", "create", "web"), "", ("web", "exists")),
    ([], ("client", "revoke", "nobody"), "", ("nobody",)),
    ([], ("user", "disable", "--login", "nobody"), "", ("nobody",)),
    ([], ("user", "enable", "--login", "nobody"), "", ("nobody",)),
    ([], ("user", "set-password", "--login", "nobody", "--password-stdin"), PW, ("nobody",)),
    ([], ("deadline", "create", "Never", "--hours", "0"), "", ("hours",)),
    ([("specification", "create", "--key", "1", "A")], ("specification", "create", "--key", "1", "B"), "",
     ("1", "exists")),
    ([("account", "create", "acme")], ("user", "create", "--login", "x", "--password-stdin", "--account", "acme"),
     "1234567", ("password",)),
    ([("account", "create", "acme")], ("user", "create", "--login", "x", "--password-stdin", "--account", "acme"),
     "", ("password",)),
], ids=["dup-account", "blank-account", "rotate-unknown", "dup-client", "revoke-unknown", "disable-unknown",
        "enable-unknown", "set-password-unknown", "zero-hours", "dup-spec", "7-char-password", "empty-password"])
def test_command_errors(cli: Cli, setup: list[tuple[str, ...]], args: tuple[str, ...], stdin: str,
                        words: tuple[str, ...]) -> None:
    for step in setup:
        cli(*step).obj()
    cli(*args, stdin=stdin).failed(*words)


@pytest.mark.parametrize("args", [("specification", "create", "--key", "99999999999999999999", "Huge"),
                                  ("deadline", "create", "Forever", "--hours", "99999999999999999999")],
                         ids=["spec-key", "deadline-hours"])
def test_numbers_out_of_range_are_a_clean_error(cli: Cli, args: tuple[str, ...]) -> None:
    cli(*args).failed()


@pytest.mark.parametrize("login", ["-dash-first", "has space", "job-12", "a" * 65, "ünï", "semi;colon", "x/y"])
def test_bad_login_names_are_refused(cli: Cli, login: str) -> None:
    cli("account", "create", "acme").obj()
    cli("user", "create", f"--login={login}", "--password-stdin", "--account", "acme", stdin=PW).failed("login")
    cli("user", "enable", f"--login={login}").failed("no user")  # nothing was created


def test_missing_config_file_is_a_clean_error(cli: Cli, tmp_path: Path) -> None:
    r = cli("account", "create", "acme", config=tmp_path / "nope.toml")
    assert r.rc == 2 and r.out == ""
    assert "configuration error" in r.err and "nope.toml" in r.err


# ----------------------------------------------------------------------------- the CLI against a running gateway

async def test_a_world_made_by_the_cli_works_through_the_api(gateway_factory: GatewayFactory, cli: Cli) -> None:
    gw = await gateway_factory(world=False)
    cfg = gw.config_path
    cli("account", "create", "acme", config=cfg).obj()
    cli("user", "create", "--login", "alice", "--password-stdin", "--account", "acme", stdin=PW + "\n",
        config=cfg).obj()
    cli("user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=PW + "\r\n", config=cfg).obj()
    token = cli("client", "create", "web", config=cfg).obj()["token"]
    deadline = cli("deadline", "create", "Tomorrow", "--hours", "24", config=cfg).obj()["id"]
    cli("specification", "create", "--key", "432", "Clipping path", config=cfg).obj()
    gw.world.clients["web"] = token
    r = await gw.call("POST", "/sessions", json_body={"login": "alice", "password": PW})
    assert r.status == 201, r  # the newline that ended the password on stdin is not part of it
    job = await gw.create_job(r.json()["token"], deadlineId=deadline, specificationKey=432)
    assert (job["deadlineId"], job["specificationKey"]) == (deadline, 432)
    pat = await gw.call("POST", "/sessions", json_body={"login": "pat", "password": PW})
    assert pat.status == 201, pat
    assert_error(await gw.post_job(pat.json()["token"]), 403)


@pytest.mark.parametrize("key", [
    "0", "7",
    "-1",
])
async def test_a_specification_the_cli_creates_can_be_named_by_a_job(gw: Gateway, cli: Cli, key: str) -> None:
    r = cli("specification", "create", f"--key={key}", "From the CLI", config=gw.config_path)
    if r.rc != 0:  # refusing the key is fine too, as long as it is a clean refusal
        r.failed("key")
        return
    s = await gw.session("alice")
    listed = (await gw.call("GET", "/specifications", session=s)).json()["specifications"]
    assert {"key": int(key), "name": "From the CLI"} in listed
    for form in (False, True):
        fields = {"name": "n", "description": "d", "specificationKey": int(key)}
        reply = (await gw.call("POST", "/jobs", session=s, form={**fields, "specificationKey": key}) if form
                 else await gw.post_job(s, fields))
        assert reply.status == 201, reply
        assert reply.json()["specificationKey"] == int(key)


async def test_user_disable_ends_sessions_at_once_and_enable_allows_new_ones(gw: Gateway, cli: Cli) -> None:
    s = await gw.login("alice")
    other = await gw.login("bob")
    assert (await gw.post_job(s)).status == 201  # the session's check is in the server's cache now
    assert cli("user", "disable", "--login", "alice", config=gw.config_path).obj()["disabled"] is True
    assert_error(await gw.post_job(s), 401, "unauthorized")
    assert_error(await gw.login_reply("alice"), 401)
    assert (await gw.call("GET", "/jobs", session=other)).status == 200  # other users are untouched
    assert cli("user", "enable", "--login", "alice", config=gw.config_path).obj()["disabled"] is False
    assert_error(await gw.post_job(s), 401)  # an ended session stays ended
    assert (await gw.post_job(await gw.login("alice"))).status == 201


async def test_set_password_replaces_the_password(gw: Gateway, cli: Cli) -> None:
    out = cli("user", "set-password", "--login", "alice", "--password-stdin", stdin="brand-new-password\n",
              config=gw.config_path).obj()
    assert out["login"] == "alice" and "brand-new-password" not in json.dumps(out)
    assert_error(await gw.login_reply("alice"), 401)
    assert (await gw.login_reply("alice", "brand-new-password")).status == 201
    cli("user", "set-password", "--login", "alice", "--password-stdin", stdin="short",
        config=gw.config_path).failed("password")
    assert (await gw.login_reply("alice", "brand-new-password")).status == 201


async def test_client_revoke_ends_its_sessions(gw: Gateway, cli: Cli) -> None:
    s = await gw.session("alice", client="mobile")
    web = await gw.session("alice")
    assert (await gw.post_job(s, client=gw.world.clients["mobile"])).status == 201  # cached from here on
    cli("client", "revoke", "mobile", config=gw.config_path).obj()
    assert_error(await gw.post_job(s, client=gw.world.clients["mobile"]), 401)
    assert (await gw.post_job(web)).status == 201


async def test_a_disable_by_the_cli_process_holds_for_the_very_next_request(gw: Gateway) -> None:
    """The real command line in its own process: the server's cached session check must not outlive it."""
    s = await gw.login("alice")
    for _ in range(3):
        assert (await gw.call("GET", "/jobs", session=s)).status == 200
    run = run_process(gw.config_path, "user", "disable", "--login", "alice")
    assert run.obj()["disabled"] is True
    assert "did not confirm" not in run.err, run.err
    assert_error(await gw.call("GET", "/jobs", session=s), 401, "unauthorized")
