"""Explicit FTPS (AUTH TLS, PBSZ, PROT P) with a self-signed certificate made in tmp_path: curl and lftp
upload and download over TLS, data connections resume the control connection's TLS session (curl says
"SSL re-using session ID"; Python's ssl reports session_reused), and tls_required refuses plain logins."""

from __future__ import annotations

import datetime
import ftplib
import io
import ipaddress
import select
import ssl
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ftp_helpers import (
    HOST,
    TIMEOUT,
    FtpError,
    api_files,
    close_quietly,
    curl,
    drop,
    ftp_connect,
    ftp_url,
    lftp,
    md5,
    new_job,
    payload,
    records,
    require_tool,
    sqlite_rows,
    temp_sizes,
    wait_until,
)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def tls_gateway(gateway_factory: GatewayFactory, certificate: tuple[Path, Path], **settings: Any) -> Gateway:
    cert, key = certificate
    return await gateway_factory({"ftp.tls_certfile": str(cert), "ftp.tls_keyfile": str(key), **settings},
                                 ftp=True)


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections offer the control connection's TLS session, like FileZilla, curl and
    lftp do (ftplib itself never does); records whether the server resumed it."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context, timeout=TIMEOUT)
        self.resumed: list[bool] = []
        self.versions: list[str | None] = []

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[Any, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
            self.resumed.append(conn.session_reused)
            self.versions.append(conn.version())
        return conn, size


def client_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.maximum_version = version
    return ctx


def tls_login(gw: Gateway, ftp: ftplib.FTP_TLS, login: str = "alice") -> ftplib.FTP_TLS:
    ftp_connect(gw.ftp_port, ftp=ftp)
    ftp.login(login, gw.world.passwords[login])  # FTP_TLS.login sends AUTH TLS first
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


def upload_like_curl(f: ftplib.FTP_TLS, path: str, data: bytes) -> str:
    """STOR over a TLS data connection, ending it the way curl does (close_notify sent, not waited for)."""
    conn = f.transfercmd(f"STOR {path}")
    conn.sendall(data)
    with suppress(ssl.SSLError, OSError):
        conn.unwrap()
    conn.close()
    return f.voidresp()


def retr_tls(f: ftplib.FTP_TLS, path: str) -> bytes:
    chunks: list[bytes] = []
    f.retrbinary(f"RETR {path}", chunks.append)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- the TLS session is resumed

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, None], ids=["client-TLSv1.2", "client-newest"])
async def test_data_connections_resume_the_control_connection_session(
        gateway_factory: GatewayFactory, certificate: tuple[Path, Path], version: ssl.TLSVersion | None) -> None:
    """Whatever version the server settles on with a TLS 1.2-only or an up-to-date client, every data
    connection (upload, download, listing) resumes the control connection's session."""
    gw = await tls_gateway(gateway_factory, certificate)
    _, job, p = await new_job(gw)
    data = payload(400_000, f"tls-{version}")
    f = ResumingFTP_TLS(client_context(version))
    try:
        tls_login(gw, f)
        feat = f.sendcmd("FEAT")
        assert "AUTH TLS" in feat and "PBSZ" in feat and "PROT" in feat
        assert upload_like_curl(f, f"{p.original}/secret.jpg", data).startswith("226")
        assert retr_tls(f, f"{p.original}/secret.jpg") == data
        assert f.nlst(p.original) == ["secret.jpg"]
        assert f.resumed == [True, True, True], f.resumed  # STOR, RETR and NLST
        assert len(set(f.versions)) == 1 and f.versions[0] in ("TLSv1.2", "TLSv1.3"), f.versions
        assert f.sock.version() == f.versions[0]
    finally:
        close_quietly(f)
    assert records(gw, job["id"], "ORIGINAL")["secret.jpg"]["md5"] == md5(data)


async def test_ftplib_tls_uploads_end_cleanly(gateway_factory: GatewayFactory, certificate: tuple[Path, Path]) -> None:
    gw = await tls_gateway(gateway_factory, certificate)
    _, job, p = await new_job(gw)
    f = ftplib.FTP_TLS(context=client_context(), timeout=TIMEOUT)
    try:
        tls_login(gw, f)
        assert f.storbinary(f"STOR {p.original}/a.jpg", io.BytesIO(b"tls bytes")).startswith("226")
    finally:
        close_quietly(f)
    assert records(gw, job["id"], "ORIGINAL")["a.jpg"]["md5"] == md5(b"tls bytes")


async def test_a_reset_tls_data_connection_is_never_recorded_as_complete(
        gateway_factory: GatewayFactory, certificate: tuple[Path, Path]) -> None:
    gw = await tls_gateway(gateway_factory, certificate)
    _, job, p = await new_job(gw)
    data = payload(1_000_000, "tls-reset")
    folder = gw.job_dir(job, "ORIGINAL")
    f = ResumingFTP_TLS(client_context())
    answer = ""
    try:
        tls_login(gw, f)
        conn = f.transfercmd(f"STOR {p.original}/photo.jpg")
        try:
            conn.sendall(data[:400_000])
            wait_until(lambda: 400_000 in temp_sizes(folder), what="the first bytes on disk")
        finally:
            drop(conn)  # the data connection is reset (the client is still there on the control connection)
        try:
            answer = f.voidresp()
        except FtpError as e:
            answer = str(e)
    finally:
        close_quietly(f)
    assert not (folder / "photo.jpg").exists(), f"400000 of 1000000 bytes stored as complete ({answer})"
    assert records(gw, job["id"]) == {}
    assert not answer.startswith("226"), answer


async def test_a_tls_upload_whose_226_was_never_read_is_taken_back(
        gateway_factory: GatewayFactory, certificate: tuple[Path, Path]) -> None:
    """Over FTPS too: the client hangs up with the 226 unread (as a killed one would), so the upload goes
    back to being its partial; a second one that reads its 226 and quits keeps its file."""
    gw = await tls_gateway(gateway_factory, certificate)
    _, job, p = await new_job(gw)
    unread, kept = payload(300_000, "tls-unread"), payload(300_000, "tls-read")
    f = ResumingFTP_TLS(client_context())
    try:
        tls_login(gw, f)
        conn = f.transfercmd(f"STOR {p.original}/unread.jpg")
        conn.sendall(unread)
        with suppress(ssl.SSLError, OSError):
            conn.unwrap()
        conn.close()
        ready, _, _ = select.select([f.sock], [], [], 10)
        assert ready, "no 226 came"
    finally:
        f.close()  # the 226 still unread on the socket: a reset
    g = ResumingFTP_TLS(client_context())
    try:
        tls_login(gw, g)
        assert upload_like_curl(g, f"{p.original}/read.jpg", kept).startswith("226")
        g.quit()
    finally:
        close_quietly(g)
    wait_until(lambda: sqlite_rows(gw.db_path, "select path, size from partials") == [("unread.jpg", len(unread))],
               what="the unread upload kept as a partial")
    assert {name: rec["md5"] for name, rec in records(gw, job["id"], "ORIGINAL").items()} == {"read.jpg": md5(kept)}
    assert not (gw.job_dir(job, "ORIGINAL") / "unread.jpg").exists()


# ----------------------------------------------------------------------------- real clients over TLS

async def test_curl_uploads_and_downloads_over_tls_resuming_the_session(
        gateway_factory: GatewayFactory, certificate: tuple[Path, Path], tmp_path: Path) -> None:
    require_tool("curl")
    gw = await tls_gateway(gateway_factory, certificate)
    session, job, p = await new_job(gw)
    src = tmp_path / "photo.jpg"
    data = payload(800_000, "curl-tls")
    src.write_bytes(data)
    url = ftp_url(gw.ftp_port, p.original + "/", "alice", gw.world.passwords["alice"])
    up = curl("--ssl-reqd", "-k", "-v", "-T", str(src), url)
    assert up.returncode == 0, up.stderr
    assert "AUTH" in up.stderr and "PROT P" in up.stderr and "< 226" in up.stderr
    assert "SSL re-using session ID" in up.stderr, up.stderr
    assert records(gw, job["id"], "ORIGINAL")["photo.jpg"]["md5"] == md5(data)
    out = tmp_path / "back.jpg"
    down = curl("--ssl-reqd", "-k", "-v", "-o", str(out), url + "photo.jpg")
    assert down.returncode == 0, down.stderr
    assert "SSL re-using session ID" in down.stderr
    assert out.read_bytes() == data
    assert (await api_files(gw, session, job["id"], "ORIGINAL"))["photo.jpg"]["mD5"] == md5(data)


async def test_lftp_uploads_and_downloads_over_tls(gateway_factory: GatewayFactory, certificate: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    require_tool("lftp")
    gw = await tls_gateway(gateway_factory, certificate, **{"ftp.tls_required": True})
    _, job, p = await new_job(gw)
    local = tmp_path / "up"
    local.mkdir()
    files = {"a.jpg": payload(300_000, "lftp-a"), "b.jpg": payload(50_000, "lftp-b")}
    for name, data in files.items():
        (local / name).write_bytes(data)
    run = lftp(gw.ftp_port, "alice", gw.world.passwords["alice"],
               f'cd "{p.original}"; mput "{local}/a.jpg" "{local}/b.jpg"', tls=True, home=tmp_path)
    assert run.returncode == 0, run
    assert {n: r["md5"] for n, r in records(gw, job["id"], "ORIGINAL").items()} == {
        n: md5(d) for n, d in files.items()}
    back = tmp_path / "back"
    back.mkdir()
    run = lftp(gw.ftp_port, "alice", gw.world.passwords["alice"],
               f'lcd "{back}"; cd "{p.original}"; mget a.jpg b.jpg', tls=True, home=tmp_path)
    assert run.returncode == 0, run
    assert {x.name: x.read_bytes() for x in back.iterdir()} == files


# ----------------------------------------------------------------------------- tls_required

async def test_tls_required_refuses_plain_logins_and_plain_data(gateway_factory: GatewayFactory,
                                                               certificate: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    gw = await tls_gateway(gateway_factory, certificate, **{"ftp.tls_required": True})
    _, job, p = await new_job(gw)
    plain = ftp_connect(gw.ftp_port)
    try:
        for cmd in ("USER alice", f"PASS {gw.world.passwords['alice']}"):
            with pytest.raises(ftplib.error_perm, match=r"^550 SSL/TLS required on the control channel"):
                plain.sendcmd(cmd)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            plain.sendcmd(f"CWD {p.original}")  # not logged in
    finally:
        close_quietly(plain)
    f = ResumingFTP_TLS(client_context())
    try:
        ftp_connect(gw.ftp_port, ftp=f)
        f.login("alice", gw.world.passwords["alice"])
        f.voidcmd("PBSZ 0")
        f.prot_c()
        with pytest.raises(ftplib.error_perm, match=r"^550 SSL/TLS required on the data channel"):
            f.sendcmd("PASV")
        f.prot_p()
        f.voidcmd("TYPE I")
        assert upload_like_curl(f, f"{p.original}/ok.jpg", b"private").startswith("226")
    finally:
        close_quietly(f)
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["ok.jpg"]
    require_tool("curl")  # and a real client sees the same
    src = tmp_path / "plain.jpg"
    src.write_bytes(b"plain")
    url = ftp_url(gw.ftp_port, p.original + "/", "alice", gw.world.passwords["alice"])
    refused_run = curl("-T", str(src), url)
    assert refused_run.returncode != 0 and "550" in refused_run.stderr, refused_run
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["ok.jpg"]
    assert curl("--ssl-reqd", "-k", "-T", str(src), url).returncode == 0
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["ok.jpg", "plain.jpg"]


async def test_plain_ftp_still_works_when_tls_is_optional(gateway_factory: GatewayFactory,
                                                          certificate: tuple[Path, Path]) -> None:
    gw = await tls_gateway(gateway_factory, certificate)
    _, job, p = await new_job(gw)
    f = ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"])
    try:
        assert f.storbinary(f"STOR {p.original}/plain.jpg", io.BytesIO(b"plain")).startswith("226")
        with pytest.raises(FtpError):
            f.sendcmd("PROT P")  # PROT needs a TLS control connection first
    finally:
        close_quietly(f)
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["plain.jpg"]
