"""Real clients as subprocesses: curl (-T to the handed-out ftpUrl, --ftp-pasv, downloads, listings) and
lftp (mirror -R of a folder tree and mirror back), with the records checked after each."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Gateway
from ftp_helpers import (
    api_files,
    assert_records_true,
    curl,
    ftp_as,
    ftp_url,
    job_login,
    lftp,
    md5,
    new_job,
    payload,
    records,
    require_tool,
    stor,
    tree,
    with_credentials,
    writer_barrier,
)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("curl")


@pytest.mark.parametrize("who", ["account", "job"])
async def test_curl_uploads_to_the_handed_out_ftp_url(ftp_gw: Gateway, tmp_path: Path, who: str) -> None:
    """`curl -T photo.jpg ftp://USER:PASS@host:port/<date>/<id>/ORIGINAL/` just works, for both logins."""
    session, job, p = await new_job(ftp_gw)
    login, password = job_login(job) if who == "job" else ("alice", ftp_gw.world.passwords["alice"])
    url = with_credentials(job["upload"]["ftpUrl"], login, password)
    assert url.endswith(f":{ftp_gw.ftp_port}{p.original}/")
    sent = {}
    for name, extra in (("photo.jpg", []), ("pasv photo.jpg", ["--ftp-pasv", "--disable-epsv"])):
        src = tmp_path / name
        sent[name] = payload(700_000, f"curl-{who}-{name}")
        src.write_bytes(sent[name])
        run = curl(*extra, "-T", str(src), url)
        assert run.returncode == 0, run
        rec = records(ftp_gw, job["id"], "ORIGINAL")[name]  # recorded when curl saw its 226
        assert (rec["md5"], rec["login"]) == (md5(sent[name]), login)
    listing = curl("-l", url)
    assert listing.returncode == 0 and sorted(listing.stdout.split("\n")[:-1]) == sorted(sent), listing
    for name, data in sent.items():
        out = tmp_path / f"back-{name}"
        run = curl("-o", str(out), url + name.replace(" ", "%20"))
        assert run.returncode == 0, run
        assert out.read_bytes() == data
    api = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
    assert {n: f["mD5"] for n, f in api.items()} == {n: md5(d) for n, d in sent.items()}
    assert_records_true(ftp_gw, job)


async def test_curl_downloads_the_clipped_results_from_the_download_url(ftp_gw: Gateway, tmp_path: Path) -> None:
    _, job, p = await new_job(ftp_gw)
    result = payload(300_000, "result")
    with ftp_as(ftp_gw, "pat") as f:
        stor(f, f"{p.clipped}/result.png", result)
    for login, password in (("alice", ftp_gw.world.passwords["alice"]), job_login(job)):
        out = tmp_path / f"{login}.png"
        run = curl("--ftp-pasv", "-o", str(out), with_credentials(job["download"]["ftpUrl"], login, password)
                   + "result.png")
        assert run.returncode == 0, run
        assert out.read_bytes() == result
    # and the customer cannot upload there: curl reports the server's refusal
    src = tmp_path / "mine.png"
    src.write_bytes(b"not mine to deliver")
    run = curl("-T", str(src), with_credentials(job["download"]["ftpUrl"], "alice", ftp_gw.world.passwords["alice"]))
    assert run.returncode != 0 and "550" in run.stderr, run
    assert sorted(records(ftp_gw, job["id"], "CLIPPED")) == ["result.png"]


async def test_curl_creates_folders_and_is_refused_after_submit(ftp_gw: Gateway, tmp_path: Path) -> None:
    session, job, p = await new_job(ftp_gw)
    password = ftp_gw.world.passwords["alice"]
    src = tmp_path / "deep.jpg"
    src.write_bytes(payload(20_000, "deep"))
    run = curl("--ftp-create-dirs", "-T", str(src), ftp_url(ftp_gw.ftp_port, f"{p.original}/2024/june/", "alice",
                                                            password))
    assert run.returncode == 0, run
    assert records(ftp_gw, job["id"], "ORIGINAL")["2024/june/deep.jpg"]["md5"] == md5(src.read_bytes())
    assert (await ftp_gw.call("POST", f"/jobs/{job['id']}/submit", session=session)).status == 200
    run = curl("-T", str(src), ftp_url(ftp_gw.ftp_port, f"{p.original}/late.jpg", "alice", password))
    assert run.returncode != 0 and "550" in run.stderr, run
    assert sorted(records(ftp_gw, job["id"], "ORIGINAL")) == ["2024/june/deep.jpg"]


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.jpg": payload(150_000, "a"),
        "empty.jpg": b"",
        "sub/b.jpg": payload(70_000, "b"),
        "sub/deeper/c.jpg": payload(1_200_000, "c"),
        "Überordner/ä ö ü.jpg": payload(5_000, "umlaut"),
        "with space/d e.jpg": payload(3_000, "space"),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


async def test_lftp_mirror_reverse_uploads_a_folder_tree_and_mirror_brings_it_back(
        ftp_gw: Gateway, tmp_path: Path) -> None:
    require_tool("lftp")
    session, job, p = await new_job(ftp_gw)
    local = tmp_path / "photos"
    files = make_tree(local)
    password = ftp_gw.world.passwords["alice"]
    run = lftp(ftp_gw.ftp_port, "alice", password, f'mirror -R "{local}" "{p.original}/photos"', home=tmp_path)
    assert run.returncode == 0, run
    await writer_barrier(ftp_gw)  # lftp's MFMTs are applied after their replies
    recs = records(ftp_gw, job["id"], "ORIGINAL")
    assert sorted(recs) == sorted(f"photos/{rel}" for rel in files)
    for rel, data in files.items():
        assert (recs[f"photos/{rel}"]["size"], recs[f"photos/{rel}"]["md5"]) == (len(data), md5(data))
    api = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
    assert {n: f["mD5"] for n, f in api.items()} == {f"photos/{rel}": md5(d) for rel, d in files.items()}
    assert_records_true(ftp_gw, job)

    back = tmp_path / "back"
    run = lftp(ftp_gw.ftp_port, "alice", password, f'mirror "{p.original}/photos" "{back}"', home=tmp_path)
    assert run.returncode == 0, run
    assert {rel: data for rel, data in tree(back).items() if data is not None} == files

    # the per-job login mirrors the same tree (a second run uploads nothing new)
    user, job_password = job_login(job)
    run = lftp(ftp_gw.ftp_port, user, job_password, f'mirror -R "{local}" "{p.original}/photos"', home=tmp_path)
    assert run.returncode == 0, run
    await writer_barrier(ftp_gw)
    assert records(ftp_gw, job["id"], "ORIGINAL") == recs  # same sizes and times: nothing was sent again


async def test_lftp_processor_fetches_originals_and_delivers_clipped(ftp_gw: Gateway, tmp_path: Path) -> None:
    require_tool("lftp")
    _, job, p = await new_job(ftp_gw)
    original = payload(400_000, "orig")
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/photo.jpg", original)
    work = tmp_path / "work"
    work.mkdir()
    (work / "photo.png").write_bytes(b"clipped result")
    run = lftp(ftp_gw.ftp_port, "pat", ftp_gw.world.passwords["pat"],
               f'lcd "{work}"; get "{p.original}/photo.jpg"; cd "{p.clipped}"; put photo.png', home=tmp_path)
    assert run.returncode == 0, run
    assert (work / "photo.jpg").read_bytes() == original
    assert records(ftp_gw, job["id"], "CLIPPED")["photo.png"]["login"] == "pat"
    run = lftp(ftp_gw.ftp_port, "pat", ftp_gw.world.passwords["pat"], f'cd "{p.original}"; put "{work}/photo.png"',
               home=tmp_path)
    assert run.returncode != 0 and "550" in run.stderr + run.stdout, run
