"""Fixtures of tests/export live in tests/export/fixtures.py so other stages can import them."""

from tests.export.fixtures import (  # noqa: F401
    penalised_checkpoint,
    penalised_repository,
    python_repository,
    tiny_checkpoint,
    triton_server,
)
