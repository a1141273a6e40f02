"""Per-login virtual view of storage_root: only the login's jobs exist; temp names hidden; no os.chdir.

Virtual paths: /                      the days holding the login's jobs
               /<yyyymmdd>            the login's jobs of that day
               /<yyyymmdd>/<id>       ORIGINAL and CLIPPED
               /<yyyymmdd>/<id>/<KIND>/...   files and sub-folders on disk
pyftpdlib hands every path through ftp2fs(); here the "fs path" stays the virtual path and each
operation resolves it, so nothing outside the login's scope can be named at all.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.exceptions import FilesystemError
from pyftpdlib.filesystems import AbstractedFS

from gateway import jobs
from gateway.db import EpochCache
from gateway.errors import GatewayError
from gateway.ftp.authorizer import FtpLogin
from gateway.ftp.replies import FtpRefusal, refusal
from gateway.storage import KINDS, Storage, is_temp_name, name_problem, split_relpath

NOT_FOUND = "No such file or directory"
REUSE_NODE = 0.25  # seconds a session reuses the node it resolved last for the same path


@dataclass(frozen=True)
class Node:
    """A resolved virtual path."""

    vpath: str
    depth: int  # 0 root, 1 day, 2 job, 3 kind folder, 4+ below it
    real: Path
    day: str = ""
    job: dict[str, Any] | None = None
    kind: str = ""
    rel: str = ""  # below the kind folder, posix

    @property
    def job_id(self) -> int:
        assert self.job is not None
        return int(self.job["id"])


class VirtualFS(AbstractedFS):  # type: ignore[misc]
    """The files one FTP login may see. The handler sets `login` and `gw` before any call."""

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__("/", cmd_channel)
        self.login: FtpLogin = cmd_channel.gw_login
        self.gw = cmd_channel.gw
        self._last: EpochCache[str, Node] = EpochCache(jobs.JOBS_CHANGED, REUSE_NODE, 1)  # see _resolve

    # -- path conversion: the "filesystem path" is the normalised virtual path
    def ftpnorm(self, ftppath: str) -> str:
        if "\x00" in ftppath:
            raise FilesystemError(NOT_FOUND)
        p = posixpath.normpath(posixpath.join(self.cwd, ftppath))
        return "/" + p.lstrip("/")

    def ftp2fs(self, ftppath: str) -> str:
        try:
            return self.ftpnorm(ftppath)
        except FilesystemError:
            return "/\x00invalid"  # resolves to nothing

    def fs2ftp(self, fspath: str) -> str:
        return fspath

    def validpath(self, path: str) -> bool:
        return True  # every operation resolves through resolve(): there is nothing else to reach

    def realpath(self, path: str) -> str:
        return path

    # -- resolution
    @property
    def storage(self) -> Storage:
        return self.gw.storage  # type: ignore[no-any-return]

    def visible_job(self, job_id: int, day: str | None = None) -> dict[str, Any]:
        job: dict[str, Any] | None = self.gw.jobs.get(self.gw.db, job_id)
        if job is None or (day is not None and job["day"] != day) or not self.login.may_see(job):
            raise FilesystemError(NOT_FOUND)
        if job["status"] == jobs.ARCHIVED:
            raise FilesystemError("job archived: its files were removed")
        return job

    def resolve(self, vpath: str) -> Node:
        node = self._resolve(vpath)
        if node.depth:
            try:
                self.storage.refuse_links(node.real)  # a link planted anywhere below the root
            except GatewayError:
                raise FilesystemError(NOT_FOUND) from None
        return node

    def _resolve(self, vpath: str) -> Node:
        """The node of a path, or the one this session resolved last for the same path (a client's MFMT
        follows its STOR) while no job changed status and for REUSE_NODE seconds at most: a node below a
        day depends on nothing but the path, the login and the job's row, which JobCache keeps the same
        way. The disk is looked at again each time (resolve's link check and every operation)."""
        node = self._last.get(vpath)
        if node is None:
            seen = self._last.seen()
            node = self._resolve_path(vpath)
            if node.depth >= 2:  # a day's node also depends on which days hold jobs: not kept
                self._last.put(vpath, node, seen)
        return node

    def _resolve_path(self, vpath: str) -> Node:
        parts = [p for p in vpath.split("/") if p]
        root = self.storage.root
        if not parts:
            return Node("/", 0, root)
        day = parts[0]
        if not (len(day) == 8 and day.isascii() and day.isdigit()):
            raise FilesystemError(NOT_FOUND)
        if len(parts) == 1:
            if not self.login.has_day(self.gw.db, day):
                raise FilesystemError(NOT_FOUND)
            return Node(vpath, 1, root / day, day)
        if not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 18):
            raise FilesystemError(NOT_FOUND)
        job = self.visible_job(int(parts[1]), day)
        if len(parts) == 2:
            return Node(vpath, 2, self.storage.job_dir(day, job["id"]), day, job)
        kind = parts[2]
        if kind not in KINDS:
            raise FilesystemError(NOT_FOUND)
        kind_dir = self.storage.kind_dir(day, job["id"], kind)
        if len(parts) == 3:
            return Node(vpath, 3, kind_dir, day, job, kind)
        if any(name_problem(p) or is_temp_name(p) for p in parts[3:]):
            raise FilesystemError(NOT_FOUND)
        return Node(vpath, len(parts), kind_dir.joinpath(*parts[3:]), day, job, kind, "/".join(parts[3:]))

    def resolve_new(self, vpath: str) -> Node:
        """A path to create below a kind folder: its names are checked (553) and its parent must exist."""
        parts = [p for p in vpath.split("/") if p]
        if len(parts) < 4:
            raise FtpRefusal(553, "Files and folders can only be created inside ORIGINAL/ or CLIPPED/.")
        parent = self.resolve("/" + "/".join(parts[:-1]))
        try:
            split_relpath("/".join(parts[3:]))
        except GatewayError as e:
            raise refusal(e) from None
        target = parent.real / parts[-1]
        if not parent.real.is_dir() or target.is_symlink():
            raise FilesystemError(NOT_FOUND)
        rel = "/".join(parts[3:])
        return Node(vpath, len(parts), target, parent.day, parent.job, parent.kind, rel)

    def writable(self, node: Node) -> None:
        """Refuse with the reason when this login may not write into the node's kind folder now."""
        if node.depth < 3 or node.job is None:
            raise FilesystemError("Permission denied: only ORIGINAL/ and CLIPPED/ hold files")
        err = jobs.write_refusal(node.job, node.kind, self.login.principal)
        if err is not None:
            raise FilesystemError(str(err))

    def visible_days(self) -> list[str]:
        return self.login.days(self.gw.db)

    # -- queries used by pyftpdlib
    def listdir(self, path: str) -> list[str]:
        node = self.resolve(path)
        if node.depth == 0:
            return self.visible_days()
        if node.depth == 1:
            return [str(i) for i in self.login.job_ids(self.gw.db, node.day)]
        if node.depth == 2:
            return list(KINDS)
        return [n for n in self._entries(node.real)]

    listdirinfo = listdir

    def _entries(self, real: Path) -> Iterator[str]:
        try:
            with os.scandir(real) as it:
                for e in it:
                    if is_temp_name(e.name) or name_problem(e.name) or e.is_symlink():
                        continue
                    if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False):
                        yield e.name
        except NotADirectoryError:
            raise FilesystemError("Not a directory") from None

    def stat(self, path: str) -> os.stat_result:
        node = self.resolve(path)
        st = os.lstat(node.real)
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise FilesystemError(NOT_FOUND)
        return st

    lstat = stat

    def isdir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except (OSError, FilesystemError):
            return False

    def isfile(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).st_mode)
        except (OSError, FilesystemError):
            return False

    def islink(self, path: str) -> bool:
        return False

    def lexists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except (OSError, FilesystemError):
            return False

    def getsize(self, path: str) -> int:
        return self.stat(path).st_size

    def getmtime(self, path: str) -> float:
        return self.stat(path).st_mtime

    def chdir(self, path: str) -> None:
        if not self.isdir(path):
            self.stat(path)  # the precise error for a missing path
            raise FilesystemError("Not a directory")
        self.cwd = path  # never os.chdir: the process has one working directory

    def open(self, filename: str, mode: str) -> Any:
        if mode != "rb":
            raise FilesystemError("Permission denied")
        node = self.resolve(filename)
        fd = os.open(node.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fh = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            fh.close()
            raise FilesystemError("Not a regular file")
        return fh

    def readlink(self, path: str) -> str:
        raise FilesystemError("Not a link")

    # -- changes that need no database record (files are changed through the handler and the writer)
    def mkdir(self, path: str) -> None:
        node = self.resolve_new(path)
        self.writable(node)
        os.mkdir(node.real)

    def rmdir(self, path: str) -> None:
        node = self.resolve(path)
        if node.depth < 4:
            raise FilesystemError("Permission denied: this folder belongs to the job")
        self.writable(node)
        if not stat.S_ISDIR(os.lstat(node.real).st_mode):
            raise FilesystemError("Not a directory")
        os.rmdir(node.real)

    def remove(self, path: str) -> None:
        raise FilesystemError("Permission denied")  # DELE goes through the handler

    def rename(self, src: str, dst: str) -> None:
        raise FilesystemError("Permission denied")  # RNTO goes through the handler

    def chmod(self, path: str, mode: int) -> None:
        raise FilesystemError("Permission denied: modes are fixed")

    def utime(self, path: str, timeval: float) -> None:
        raise FilesystemError("Permission denied")  # MFMT goes through the handler

    def mkstemp(self, *args: Any, **kwargs: Any) -> Any:
        raise FilesystemError("STOU is not supported; use STOR with a name")

    # -- listings: neutral owner names, permission facts per folder
    def get_user_by_uid(self, uid: int) -> str:
        return "owner"

    def get_group_by_gid(self, gid: int) -> str:
        return "group"

    def format_mlsx(self, basedir: str, listing: list[str], perms: str, facts: list[str],
                    ignore_err: bool = True) -> Iterator[bytes]:
        try:
            node = self.resolve(basedir)
            self.writable(node)
            perms = "elradfmwMT"
        except (FilesystemError, OSError):
            perms = "elr"
        yield from super().format_mlsx(basedir, listing, perms, facts, ignore_err)
