"""training/data/download.py and `apron prepare --dataset lastfm-2k --url/--sha256`: a zip built
from ../shared/data/lastfm-2k (without artist_descriptions.json, like GroupLens' own) served by a
file:// URL, the checksum check, the cached copy, and the errors when offline."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

import cli
from common.net import free_port
from training.data import download
from training.data.dataset import ProcessedDataset
from training.data.download import LASTFM_FILES, DownloadError, lastfm_root
from training.data.sources import default_path

SHARED = default_path("lastfm-2k")


def hetrec_zip(tmp_path: Path) -> tuple[Path, str]:
    """The HetRec files in a zip under one folder, as GroupLens ships them (but for readme.txt and
    the files the loader does not read): from ../shared/data when there, else a small copy."""
    if all((SHARED / name).is_file() for name in LASTFM_FILES):
        source = SHARED
    else:  # a machine without ../shared: the loader tests' small directory
        from tests.training.data.test_lastfm import write_lastfm

        source = write_lastfm(tmp_path / "small")
    path = tmp_path / "served" / "hetrec2011-lastfm-2k.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in LASTFM_FILES:
            archive.write(source / name, f"hetrec2011-lastfm-2k/{name}")
        archive.writestr("hetrec2011-lastfm-2k/readme.txt", "HetRec 2011\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_downloads_checks_caches_and_reads_the_zip_without_descriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # artifacts/downloads is relative to the working directory
    zip_path, digest = hetrec_zip(tmp_path)
    argv = ["prepare", "--dataset", "lastfm-2k", "--url", zip_path.as_uri(), "--sha256", digest, "--out", "data"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    cached = tmp_path / "artifacts" / "downloads" / "lastfm-2k"
    assert sorted(p.name for p in cached.iterdir()) == sorted(LASTFM_FILES)  # only the files the loader reads
    assert (tmp_path / "artifacts" / "downloads" / zip_path.name).read_bytes() == zip_path.read_bytes()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temp file or staging dir left

    dataset = ProcessedDataset.load(tmp_path / "data")
    assert dataset.n_items > 0
    tagged = [text for text in dataset.texts if ". Tags: " in text]  # no descriptions: name + top tags
    assert len(tagged) > dataset.n_items // 2
    name, _, tags = tagged[0].partition(". Tags: ")
    assert name in dataset.item_names and all(tag in dataset.tag_names for tag in tags.rstrip(".").split(", "))

    # the cached copy is used when there is no local one, with no network (the URL is unreachable)
    monkeypatch.setattr(download, "LASTFM_URL", f"http://127.0.0.1:{free_port()}/hetrec2011-lastfm-2k.zip")
    assert lastfm_root(tmp_path / "no-local-copy", downloads=Path("artifacts") / "downloads") == Path(
        "artifacts", "downloads", "lastfm-2k"
    )


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    zip_path, digest = hetrec_zip(tmp_path)
    argv = ["prepare", "--dataset", "lastfm-2k", "--url", zip_path.as_uri(), "--sha256", "0" * 64, "--out", "data"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"SHA-256 is {digest}, expected {'0' * 64}" in err and "--sha256" in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "artifacts" / "downloads" / "lastfm-2k").exists()
    assert list((tmp_path / "artifacts" / "downloads").iterdir()) == []


def test_the_default_url_is_checked_against_the_built_in_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Served at the default URL, a zip that is not GroupLens' (this one is rebuilt) is refused."""
    zip_path, digest = hetrec_zip(tmp_path)
    assert digest != download.LASTFM_SHA256
    monkeypatch.setattr(download, "LASTFM_URL", zip_path.as_uri())
    with pytest.raises(DownloadError, match=f"SHA-256 is {digest}, expected {download.LASTFM_SHA256}"):
        lastfm_root(tmp_path / "no-local-copy", downloads=tmp_path / "downloads", progress=False)


def test_offline_names_the_local_copy_path_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/hetrec2011-lastfm-2k.zip"  # nothing listens: refused
    monkeypatch.setattr(download, "LASTFM_URL", unreachable)
    local = tmp_path / "shared" / "lastfm-2k"
    with pytest.raises(DownloadError) as raised:
        lastfm_root(local, downloads=tmp_path / "downloads", progress=False)
    message = str(raised.value)
    assert f"cannot download {unreachable}" in message and str(local) in message and "--url" in message
    assert list((tmp_path / "downloads").iterdir()) == []


def test_prepare_reports_offline_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}/x.zip"
    assert cli.main(["prepare", "--dataset", "lastfm-2k", "--url", url, "--out", "data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"apron prepare: error: cannot download {url}") and "Traceback" not in err


def test_not_a_hetrec_zip(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="is not a zip file"):
        lastfm_root(tmp_path / "none", url=junk.as_uri(), downloads=tmp_path / "dl", progress=False)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("artists.dat", "id\tname\turl\tpictureURL\n")
    with pytest.raises(DownloadError, match=r"lacks tags\.dat, user_artists\.dat, user_taggedartists\.dat"):
        lastfm_root(tmp_path / "none", url=other.as_uri(), downloads=tmp_path / "dl", progress=False)


def test_url_is_for_lastfm_only_and_not_with_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["prepare", "--dataset", "synthetic", "--url", "file:///x.zip", "--out", str(tmp_path / "d")]) == 2
    assert "download lastfm-2k only" in capsys.readouterr().err
    argv = ["prepare", "--dataset", "lastfm-2k", "--path", str(tmp_path), "--url", "file:///x.zip"]
    assert cli.main([*argv, "--out", str(tmp_path / "d")]) == 2
    assert "not both" in capsys.readouterr().err
