"""deploy/fill_models.py: the model volume filled from a stated source (a .tar.gz over real HTTP,
checked against its sha256; a directory), never from an archive that would write outside it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import fill_models


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_with_its_sha256_fills_the_volume_once(python_repository: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    assert fill_models.main(["--pack", str(python_repository), "--archive", str(served / "repo.tar.gz")]) == 0  # make model-archive
    sha = hashlib.sha256((served / "repo.tar.gz").read_bytes()).hexdigest()
    volume = tmp_path / "models"
    with http_server(served) as base:
        assert fill_models.main(["--into", str(volume), "--url", f"{base}/repo.tar.gz", "--sha256", sha]) == 0
        assert files(volume) == files(python_repository)
        assert not fill_models.fill(volume, url=f"{base}/repo.tar.gz", sha256=sha)  # the same model: unchanged
        with pytest.raises(fill_models.FillError, match="is not the stated"):
            fill_models.fill(tmp_path / "other", url=f"{base}/repo.tar.gz", sha256="0" * 64)
    assert not (tmp_path / "other" / fill_models.METADATA).exists()


def test_a_directory_source_and_the_demo_only_into_an_empty_volume(python_repository: Path, tmp_path: Path) -> None:
    volume = tmp_path / "models"
    assert fill_models.fill(volume, source=python_repository)
    assert files(volume) == files(python_repository)
    assert not fill_models.fill(volume, demo="synthetic")  # never replaces a model with the demo
    with pytest.raises(fill_models.FillError, match="exactly one source"):
        fill_models.fill(volume, source=python_repository, demo="synthetic")
    with pytest.raises(fill_models.FillError, match="no apron_metadata.json"):
        fill_models.fill(tmp_path / "x", source=tmp_path / "models" / "apron_profile")


def test_the_checksum_opt_out_is_read_only_for_a_url(
    python_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MODEL_ARCHIVE_INSECURE_NO_CHECKSUM is about a --url's archive: a --from fill neither reads it
    nor fails on a value it would refuse for a URL (which still refuses it)."""
    monkeypatch.delenv("MODEL_ARCHIVE_URL", raising=False)
    monkeypatch.setenv("MODEL_ARCHIVE_INSECURE_NO_CHECKSUM", "ture")  # misspelt: refused where it is read
    volume = tmp_path / "volume"
    assert fill_models.main(["--into", str(volume), "--from", str(python_repository)]) == 0, capsys.readouterr().err
    assert files(volume) == files(python_repository)
    assert fill_models.main(["--into", str(tmp_path / "other"), "--url", "http://127.0.0.1:9/repo.tar.gz"]) == 1
    assert "MODEL_ARCHIVE_INSECURE_NO_CHECKSUM='ture'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt"])
def test_an_archive_that_writes_outside_the_volume_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"x"
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()  # a checksum vouches for the bytes, not for their paths
    with http_server(tmp_path) as base, pytest.raises(fill_models.FillError, match="outside the repository"):
        fill_models.fill(tmp_path / "models", url=f"{base}/evil.tar.gz", sha256=sha)
    assert not (tmp_path / "escape.txt").exists()


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        CountingHandler.requests.append(self.path)
        super().do_GET()


@pytest.mark.parametrize("sha256", [None, "", "REPLACE-with-the-sha256-make-model-archive-printed", "ab" * 31])
def test_a_url_without_a_real_sha256_is_refused_before_downloading(
    python_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sha256: str | None
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    assert fill_models.main(["--pack", str(python_repository), "--archive", str(served / "repo.tar.gz")]) == 0
    CountingHandler.requests = []
    handler = functools.partial(CountingHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/repo.tar.gz"
    volume = tmp_path / "models"
    try:
        monkeypatch.delenv("MODEL_ARCHIVE_INSECURE_NO_CHECKSUM", raising=False)
        monkeypatch.setenv("MODEL_ARCHIVE_URL", url)  # the Job's way: the ConfigMap's variables
        if sha256 is None:
            monkeypatch.delenv("MODEL_ARCHIVE_SHA256", raising=False)
        else:
            monkeypatch.setenv("MODEL_ARCHIVE_SHA256", sha256)
        assert fill_models.main(["--into", str(volume)]) == 1
        error = capsys.readouterr().err
        assert "--insecure-no-checksum" in error if not sha256 else "not 64 hex digits" in error
        assert CountingHandler.requests == [] and not volume.exists()  # nothing fetched, nothing installed

        # only an explicit opt-out installs an unchecked archive, by flag or by variable
        monkeypatch.delenv("MODEL_ARCHIVE_SHA256", raising=False)
        assert fill_models.main(["--into", str(volume), "--insecure-no-checksum"]) == 0
        assert files(volume) == files(python_repository)
        monkeypatch.setenv("MODEL_ARCHIVE_INSECURE_NO_CHECKSUM", "true")
        assert fill_models.main(["--into", str(tmp_path / "other")]) == 0
        monkeypatch.setenv("MODEL_ARCHIVE_INSECURE_NO_CHECKSUM", "ture")  # misspelt: neither answer
        assert fill_models.main(["--into", str(tmp_path / "third")]) == 1
        assert "MODEL_ARCHIVE_INSECURE_NO_CHECKSUM" in capsys.readouterr().err and not (tmp_path / "third").exists()
    finally:
        server.shutdown()
        server.server_close()
