"""Getting HetRec 2011 Last.fm 2K onto a fresh machine: a local copy when there is one, else
GroupLens' public zip, checked, cached and extracted.

    root = lastfm_root()              # ../shared/data/lastfm-2k, else artifacts/downloads/..., else download
    root = download_lastfm(url=..., sha256=...)   # `apron prepare --dataset lastfm-2k --url URL`

The zip holds the four files the loader reads (training/data/lastfm.py) but not
`artist_descriptions.json`, an optional extra made for this project: the loader then builds each
artist's text from its name and top tags.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from common.files import atomic_path, replace_dir
from training.data.raw import DataError

LASTFM_URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
# Not computed here (this machine is offline): the value four unrelated public projects pin for
# this URL (dataset loaders and course material found by searching public source code). A zip
# that does not match is refused; pass --sha256 to check another file, or --url to another copy.
LASTFM_SHA256 = "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c"
LASTFM_FILES = ("artists.dat", "tags.dat", "user_artists.dat", "user_taggedartists.dat")
DOWNLOADS = Path("artifacts") / "downloads"  # relative to the working directory, like --out's default
CHUNK = 1 << 16


class DownloadError(DataError):
    """The dataset could not be fetched or is not what was expected (offline, bad checksum, bad zip)."""


def has_lastfm_files(path: Path) -> bool:
    return all((path / name).is_file() for name in LASTFM_FILES)


def cached_lastfm(downloads: Path = DOWNLOADS) -> Path:
    """Where a downloaded copy is extracted."""
    return downloads / "lastfm-2k"


def lastfm_root(
    local: Path, url: str | None = None, sha256: str | None = None, downloads: Path = DOWNLOADS, progress: bool = True
) -> Path:
    """The directory to read Last.fm 2K from: `local` (../shared/data/lastfm-2k) when it has the
    files, else a copy downloaded earlier, else a fresh download. A `url` always downloads."""
    if url is None:
        for candidate in (local, cached_lastfm(downloads)):
            if has_lastfm_files(candidate):
                return candidate
    return download_lastfm(url or LASTFM_URL, sha256, downloads, progress, local_hint=local)


def download_lastfm(
    url: str = LASTFM_URL,
    sha256: str | None = None,
    downloads: Path = DOWNLOADS,
    progress: bool = True,
    local_hint: Path | None = None,
) -> Path:
    """Fetch the zip at `url`, check its SHA-256 (`sha256`, or the built-in one for the default
    URL), extract the Last.fm files into `downloads/lastfm-2k` (replacing a previous copy only once
    the new one is complete) and return that directory. The zip is kept beside it."""
    expected = (sha256 or (LASTFM_SHA256 if url == LASTFM_URL else None) or "").lower() or None
    downloads.mkdir(parents=True, exist_ok=True)
    zip_path = downloads / (Path(urllib.parse.urlparse(url).path).name or "lastfm-2k.zip")
    digest = _fetch(url, zip_path, progress, local_hint)
    if expected is not None and digest != expected:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"{url}: SHA-256 is {digest}, expected {expected}; the file was deleted "
                            "(pass --sha256 for a different file, or --url for another copy)")
    return _extract(zip_path, cached_lastfm(downloads))


def _fetch(url: str, target: Path, progress: bool, local_hint: Path | None) -> str:
    """Stream `url` to `target` (through a temp file) and return its SHA-256 hex digest."""
    from tqdm.auto import tqdm

    hasher = hashlib.sha256()
    try:
        with (
            atomic_path(target, suffix=".part") as tmp,  # a cut download never leaves a partial zip
            urllib.request.urlopen(url, timeout=30) as response,
            open(tmp, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {url}", disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        where = f"put the HetRec files in {local_hint} (or pass --path DIR), or " if local_hint else ""
        raise DownloadError(f"cannot download {url} ({reason}): {where}pass --url to a copy you can reach "
                            "(file:///path/to/hetrec2011-lastfm-2k.zip works)") from error
    return hasher.hexdigest()


def _extract(zip_path: Path, target: Path) -> Path:
    """The zip's Last.fm files (at its root or in one folder) into `target`, staged then renamed."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = {Path(info.filename).name: info for info in archive.infolist()
                           if Path(info.filename).name in LASTFM_FILES and not info.is_dir()}  # fmt: skip
                missing = [name for name in LASTFM_FILES if name not in members]
                if missing:
                    raise DownloadError(f"{zip_path} lacks {', '.join(missing)}: not the HetRec 2011 Last.fm 2K zip")
                for name, info in members.items():  # by base name: no path from the zip is trusted
                    with archive.open(info) as source, open(staging / name, "wb") as out:
                        shutil.copyfileobj(source, out)
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{zip_path} is not a zip file ({error})") from error
        replace_dir(staging, target, LASTFM_FILES[0])  # a copy this wrote holds every one of them
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
