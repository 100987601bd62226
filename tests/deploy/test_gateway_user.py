"""The gateway starts as the image's own user (deploy/Dockerfile's USER, uid 10001) from a
repository `apron export` wrote under a restrictive umask, as `docker compose up` runs it: the
repository belongs to another user (root here) and is only readable to the gateway.

A real `apron serve` process (loadtests/gateway_process.py) with its private
redis-server and a JWT secret in a directory that user owns; ready when it answers ListPrototypes
with the exported model's tags."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from export.metadata import read_metadata
from loadtests.gateway_process import run_gateway
from serving import auth
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.deploy.conftest import image_user
from tests.export.fixtures import export_tiny_repository

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory other users can enter (pytest's own temporary directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="apron-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a running process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_gateway_starts_as_the_image_user_from_an_exported_repository(
    tiny_checkpoint: Path, world_traversable_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting the gateway as another user (the image's uid 10001) needs root")
    uid, gid = image_user()
    repository = world_traversable_dir / "model_repository"
    previous = os.umask(0o077)  # a cautious operator's umask: the export must not inherit it
    try:
        export_tiny_repository(tiny_checkpoint, repository)
    finally:
        os.umask(previous)

    home = world_traversable_dir / "gateway"  # the gateway's own: Redis data, its secret, its cwd
    home.mkdir(mode=0o700)
    os.chown(home, uid, gid)
    secret = home / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    os.chown(secret, uid, gid)
    token = auth.mint_token(auth.read_secret_file(secret).key, "deploy-tests", auth.Role.SERVICE)
    args = [
        "--repository", str(repository), "--no-build-demo", "--backend", "onnxruntime",
        "--redis-dir", str(home / "redis"), "--jwt-secret-file", str(secret),
    ]  # fmt: skip
    with run_gateway(args, home / "run", user=(uid, gid)) as gateway:
        assert process_ids(gateway.process.pid) == (uid, gid)
        with grpc.insecure_channel(gateway.target) as channel:
            response = pb_grpc.RecommenderStub(channel).ListPrototypes(
                pb.ListPrototypesRequest(), metadata=auth.bearer_metadata(token), timeout=60
            )
    meta = read_metadata(repository)
    assert [p.name for p in response.prototypes] == meta.tag_names
    assert response.model_version == meta.model_version and response.k_max == meta.k_max
