"""Command line: `serve` and the admin commands; each admin command prints one JSON object."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from gateway import accounts, jobs, notify
from gateway.config import Config, ConfigError, load_config
from gateway.db import open_db
from gateway.errors import GatewayError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="FTP + HTTP storage gateway for image-editing jobs.")
    p.add_argument("--config", default="config.toml", help="path of config.toml (default: ./config.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the HTTP API and the FTP server in this process")

    account = sub.add_parser("account", help="customer accounts").add_subparsers(dest="action", required=True)
    account.add_parser("create", help="create an account; prints its id and callback secret").add_argument("name")
    account.add_parser("rotate-secret", help="replace the account's callback secret").add_argument("name")

    user = sub.add_parser("user", help="users: customers and processors").add_subparsers(dest="action", required=True)
    uc = user.add_parser("create", help="create a user; the password is read from stdin")
    uc.add_argument("--login", required=True)
    uc.add_argument("--password-stdin", action="store_true", required=True)
    role = uc.add_mutually_exclusive_group(required=True)
    role.add_argument("--account", help="the customer's account (name or id)")
    role.add_argument("--processor", action="store_true", help="staff working on every account's jobs")
    sp = user.add_parser("set-password", help="replace a user's password (read from stdin)")
    sp.add_argument("--login", required=True)
    sp.add_argument("--password-stdin", action="store_true", required=True)
    for action, text in (("disable", "disable a user and end its sessions at once"), ("enable", "enable a user")):
        user.add_parser(action, help=text).add_argument("--login", required=True)

    client = sub.add_parser("client", help="API clients (X-Client-Token)").add_subparsers(dest="action", required=True)
    client.add_parser("create", help="create a client; prints its token once").add_argument("name")
    client.add_parser("revoke", help="revoke a client and end its sessions").add_argument("name")

    deadline = sub.add_parser("deadline", help="deadlines").add_subparsers(dest="action", required=True)
    dc = deadline.add_parser("create", help="create a deadline")
    dc.add_argument("name")
    dc.add_argument("--hours", type=int, required=True)

    spec = sub.add_parser("specification", help="specifications").add_subparsers(dest="action", required=True)
    sc = spec.add_parser("create", help="create a specification")
    sc.add_argument("--key", type=int, required=True)
    sc.add_argument("name")
    return p


def read_password() -> str:
    text = sys.stdin.read()
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    accounts.check_password_strength(text)
    return text


def _account_create(db: sqlite_utils.Database, args: argparse.Namespace) -> dict[str, Any]:
    row = accounts.create_account(db, args.name)
    secret = accounts.server_secret(args.secret_path)
    return {"id": row["id"], "name": row["name"], "callbackSecret": accounts.callback_secret(secret, row)}


def _account_rotate(db: sqlite_utils.Database, args: argparse.Namespace) -> dict[str, Any]:
    row = accounts.rotate_callback_secret(db, args.name)
    return {"id": row["id"], "name": row["name"],
            "callbackSecret": accounts.callback_secret(accounts.server_secret(args.secret_path), row)}


def _user_create(db: sqlite_utils.Database, args: argparse.Namespace) -> dict[str, Any]:
    accounts.check_login_name(args.login)
    password = read_password()
    role = "processor" if args.processor else "customer"
    return accounts.create_user(db, args.login, accounts.hash_password(password), role, args.account)


def _user_password(db: sqlite_utils.Database, args: argparse.Namespace) -> dict[str, Any]:
    return accounts.set_password(db, args.login, accounts.hash_password(read_password()))


COMMANDS: dict[tuple[str, str], Callable[[sqlite_utils.Database, argparse.Namespace], dict[str, Any]]] = {
    ("account", "create"): _account_create,
    ("account", "rotate-secret"): _account_rotate,
    ("user", "create"): _user_create,
    ("user", "set-password"): _user_password,
    ("user", "disable"): lambda db, a: accounts.set_disabled(db, a.login, True),
    ("user", "enable"): lambda db, a: accounts.set_disabled(db, a.login, False),
    ("client", "create"): lambda db, a: accounts.create_client(db, a.name),
    ("client", "revoke"): lambda db, a: accounts.revoke_client(db, a.name),
    ("deadline", "create"): lambda db, a: jobs.create_deadline(db, a.name, a.hours),
    ("specification", "create"): lambda db, a: jobs.create_specification(db, a.key, a.name),
}


def run_admin(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    args.secret_path = config.secret_path
    db = open_db(config.db_path)
    try:
        with db.atomic():
            return COMMANDS[(args.command, args.action)](db, args)
    finally:
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"gateway: configuration error: {e}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from gateway.server import serve

        return serve(config)
    try:
        result = run_admin(config, args)
    except GatewayError as e:
        print(f"gateway: {e.message}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error, OverflowError, ValueError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 1
    if notify.tell_server(config.db_path) is False:
        print("gateway: warning: the running server did not confirm the change; it takes effect within "
              "a second", file=sys.stderr)
    print(json.dumps(result))
    return 0
