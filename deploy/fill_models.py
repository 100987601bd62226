"""Fill the model volume that Triton and the gateway read, from a stated source; run once before
them (compose: the `models` service; Kubernetes: the Job in deploy/k8s/model-repository.yaml).

    python fill_models.py --into /models --url https://host/apron-model-repository-3.tar.gz --sha256 HEX
    python fill_models.py --into /models --url http://localhost:8000/repo.tar.gz --insecure-no-checksum   # a laptop only
    python fill_models.py --into /models --from /baked/model_repository
    python fill_models.py --into /models --demo lastfm-2k      # build the demo model (needs the `train` extra)
    python fill_models.py --pack model_repository --archive artifacts/apron-model-repository.tar.gz

Sources:
- `--url`: a .tar.gz of a repository `apron export` wrote (`--pack`, which `make model-archive`
  runs on ./model_repository, makes one and prints its sha256). The download must match `--sha256`
  (64 hex digits): a URL without one is refused unless `--insecure-no-checksum` (env
  MODEL_ARCHIVE_INSECURE_NO_CHECKSUM=true) says an unverified archive is acceptable here, since what
  it installs is the model every gateway serves.
- `--from`: a directory holding such a repository (e.g. baked into an image).
- `--demo DATASET`: what `apron serve` builds when it has no model (export/demo.py): lastfm-2k
  (downloaded), or synthetic (offline).

A volume that already holds a model is left as it is unless the source brings one that differs:
version directories are added beside the existing ones (Triton's poll loads them, the gateway's
repository watch rolls out), and `apron_metadata.json` is replaced last, atomically, so a reader
never sees metadata for graphs not yet written. Stdlib only (the gateway image has no extra tools);
`--demo` imports the project's training stack.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

METADATA = "apron_metadata.json"  # export/contract.py's METADATA_FILENAME (not imported: stdlib only)
SHA256_HEX_DIGITS = 64
TRUE_WORDS, FALSE_WORDS = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})


class FillError(Exception):
    """The source cannot fill the volume; the message says why."""


def safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's files and directories, refusing any that would land outside the target
    (absolute paths, `..`, links, devices): an archive from a URL is not trusted."""
    members = []
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise FillError(f"archive member {member.name!r} would land outside the repository")
        if not (member.isfile() or member.isdir()):
            raise FillError(f"archive member {member.name!r} is not a plain file or directory")
        members.append(member)
    return members


def repository_root(extracted: Path) -> Path:
    """The directory holding apron_metadata.json: the archive's top, or its one top-level folder."""
    if (extracted / METADATA).is_file():
        return extracted
    folders = [p for p in extracted.iterdir() if p.is_dir()]
    if len(folders) == 1 and (folders[0] / METADATA).is_file():
        return folders[0]
    raise FillError(f"the source holds no {METADATA}: not a repository `apron export` wrote")


def check_sha256(url: str, sha256: str | None, insecure_no_checksum: bool) -> None:
    """Refuse, before anything is downloaded, a URL whose archive would not be verified: an empty
    checksum, or a placeholder left unfilled, must fail the Job rather than install whatever the
    URL serves."""
    if sha256 is None or not sha256.strip():
        if insecure_no_checksum:
            return
        raise FillError(
            f"{url}: no sha256 to check the archive against; give --sha256 (MODEL_ARCHIVE_SHA256: the one "
            "`make model-archive` printed), or --insecure-no-checksum (MODEL_ARCHIVE_INSECURE_NO_CHECKSUM=true) "
            "to install an unverified archive (never in production)"
        )
    if len(sha256) != SHA256_HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise FillError(f"sha256 {sha256!r} is not {SHA256_HEX_DIGITS} hex digits: set the one `make model-archive` printed")


def download(url: str, into: Path, sha256: str | None) -> Path:
    target = into / "repository.tar.gz"
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310 (the stated source)
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if sha256 and digest.hexdigest() != sha256.lower():
        raise FillError(f"{url}: sha256 {digest.hexdigest()} is not the stated {sha256}")
    return target


def unpack(archive_path: Path, into: Path) -> Path:
    with tarfile.open(archive_path, "r:gz") as archive:
        members = safe_members(archive)
        archive.extractall(into, members=members)  # noqa: S202 (members checked above)
    return repository_root(into)


def install(source: Path, target: Path) -> bool:
    """Copy `source`'s repository into `target`; False when `target` already holds the same model."""
    target.mkdir(parents=True, exist_ok=True)
    new_metadata = (source / METADATA).read_bytes()
    if (target / METADATA).is_file() and (target / METADATA).read_bytes() == new_metadata:
        return False
    for entry in sorted(source.iterdir()):
        if entry.name == METADATA:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target / entry.name)
    staged = target / f".{METADATA}.new"
    staged.write_bytes(new_metadata)
    os.replace(staged, target / METADATA)  # last: the model is complete before anyone sees it
    return True


def pack(repository: Path, archive_path: Path) -> str:
    """`repository` (what `apron export` wrote) as the .tar.gz `--url` installs; its sha256."""
    repository_root(repository)  # refuses a directory without a model
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "w:gz") as archive:
        for entry in sorted(repository.iterdir()):
            archive.add(entry, arcname=entry.name)
    return hashlib.sha256(archive_path.read_bytes()).hexdigest()


def build_demo(dataset: str, into: Path) -> Path:
    from export.demo import DemoSettings, build_demo_repository

    return build_demo_repository(into / "model_repository", DemoSettings(dataset=dataset))


def fill(
    target: Path,
    url: str | None = None,
    sha256: str | None = None,
    source: Path | None = None,
    demo: str | None = None,
    insecure_no_checksum: bool = False,
) -> bool:
    """Fill `target` from exactly one source; True when it changed. A `url` needs its `sha256` unless
    `insecure_no_checksum`."""
    if sum(x is not None for x in (url, source, demo)) != 1:
        raise FillError("give exactly one source: --url, --from or --demo")
    if url is not None:
        check_sha256(url, sha256, insecure_no_checksum)
    if demo is not None and (target / METADATA).is_file():
        return False  # a demo is built only into an empty volume: it would replace a real model
    with tempfile.TemporaryDirectory(prefix="apron-fill-") as work:  # $TMPDIR: the volume's parent may be read-only
        work_dir = Path(work)
        if url is not None:
            repository = unpack(download(url, work_dir, sha256), work_dir / "extracted")
        elif source is not None:
            repository = repository_root(source)
        else:
            repository = build_demo(demo, work_dir)  # type: ignore[arg-type]
        return install(repository, target)


def env_flag(name: str) -> bool:
    """A boolean variable, read strictly: a misspelt value must not quietly mean either answer."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise FillError(f"{name}={value!r}: expected one of {sorted(TRUE_WORDS | (FALSE_WORDS - {''}))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--into", type=Path, help="the model volume (mounted where Triton and the gateway read it)")
    parser.add_argument("--pack", type=Path, default=None, help="instead: pack this repository into --archive, print its sha256")
    parser.add_argument("--archive", type=Path, default=Path("artifacts/apron-model-repository.tar.gz"), help="where --pack writes")
    parser.add_argument("--url", default=os.environ.get("MODEL_ARCHIVE_URL") or None, help="a .tar.gz of a repository [env MODEL_ARCHIVE_URL]")
    parser.add_argument("--sha256", default=os.environ.get("MODEL_ARCHIVE_SHA256") or None, help="its sha256, required with --url [env MODEL_ARCHIVE_SHA256]")
    parser.add_argument(
        "--insecure-no-checksum",
        action="store_true",
        default=None,
        help="install a --url archive without a sha256 to check it against (a laptop, never production) "
        "[env MODEL_ARCHIVE_INSECURE_NO_CHECKSUM=true]",
    )
    parser.add_argument("--from", dest="source", type=Path, default=None, help="a directory holding a repository")
    parser.add_argument("--demo", default=None, help="build the demo model from this dataset: lastfm-2k or synthetic")
    args = parser.parse_args(argv)
    if args.pack is not None:
        try:
            sha256 = pack(args.pack, args.archive)
        except (FillError, OSError) as error:
            print(f"fill_models: {error}", file=sys.stderr)
            return 1
        print(f"{args.archive}\nsha256 {sha256}")
        return 0
    if args.into is None:
        parser.error("--into is required (or --pack)")
    try:
        # the opt-out only means something for a --url: a --from or --demo fill does not read it, so a
        # value left in the environment (or misspelt there) cannot stop a fill it has no part in
        insecure = bool(args.insecure_no_checksum) or (args.url is not None and env_flag("MODEL_ARCHIVE_INSECURE_NO_CHECKSUM"))
        changed = fill(args.into, args.url, args.sha256, args.source, args.demo, insecure_no_checksum=insecure)
    except (FillError, OSError, tarfile.TarError) as error:
        print(f"fill_models: {error}", file=sys.stderr)
        return 1
    print(f"fill_models: {args.into} {'filled' if changed else 'already holds this model'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
