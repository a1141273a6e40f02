"""Bare pyftpdlib: FTPServer + DummyAuthorizer, default options (the reference for the FTP figures).

usage: python -m bench.refs.bare_ftp PORT ROOT USER PASSWORD
"""

from __future__ import annotations

import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main(argv: list[str]) -> None:
    port, root, user, password = int(argv[0]), argv[1], argv[2], argv[3]
    logging.basicConfig(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, root, perm="elradfmwMT")
    handler = type("BareHandler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", port), handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
