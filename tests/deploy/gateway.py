"""A real gateway (serving.server.create_server) on free ports in a background thread with its own
event loop, so that blocking test code (a Prometheus or Locust subprocess) cannot stall it; and a
prepared dataset whose test users' items are the tiny exported model's catalog."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from serving import auth
from serving.config import ServingConfig
from serving.server import ApronServer, create_server
from tests.export.fixtures import tiny_dataset
from training.data.dataset import ProcessedDataset


@dataclass(frozen=True)
class Gateway:
    server: ApronServer
    token: str  # a `service` bearer token the gateway accepts

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return auth.bearer_metadata(self.token)


@contextlib.contextmanager
def running_gateway(repository: Path, **overrides: object) -> Iterator[Gateway]:
    """Serve `repository` with the in-process backend, a private redis-server and auth on (a secret
    of its own, not the development one) until the block exits."""
    secret_dir = Path(tempfile.mkdtemp(prefix="apron-gateway-"))
    secret_file = secret_dir / "jwt_secret"
    secret_file.write_text(secrets.token_hex(32))
    secret_file.chmod(0o600)
    config = ServingConfig(
        repository=str(repository), port=0, metrics_port=0, build_demo=False, log_level="WARNING",
        jwt_secret_file=str(secret_file), redis_dir=str(secret_dir / "redis"), request_timeout_s=120.0, **overrides,
    )
    token = auth.mint_token(auth.read_secret_file(secret_file).key, "tests", auth.Role.SERVICE)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()

    def run(coroutine: object, timeout: float) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)  # type: ignore[arg-type]

    try:
        server, _port = run(create_server(config), 120)
        run(server.start(), 60)
        try:
            yield Gateway(server, token)
        finally:
            run(server.stop(1.0), 30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def tiny_processed_dataset(path: Path, seed: int = 0) -> Path:
    """The tiny export fixture's users as a dataset directory (`apron prepare`'s format), so its
    test users' histories are ids the tiny model serves."""
    record, _features, users = tiny_dataset(seed)
    matrix = sp.csr_matrix(users)
    n = matrix.shape[0]
    train, val, test = matrix[: n // 2], matrix[n // 2 : 3 * n // 4], matrix[3 * n // 4 :]
    empty = sp.csr_matrix(test.shape, dtype=np.float32)
    dataset = ProcessedDataset(
        name=record.name,
        source="tests",
        item_ids=record.item_ids,
        item_names=record.item_names,
        tag_names=record.tag_names,
        tag_groups=record.tag_groups,
        prototype_items=record.prototype_items,
        train=train,
        val_tr=val,
        val_te=sp.csr_matrix(val.shape, dtype=np.float32),
        test_tr=test,
        test_te=empty,
        item_tags=record.item_tags,
        texts=record.item_names,
    )
    return dataset.save(path)
