"""Fixtures of tests/export live in tests/export/fixtures.py so other stages can import them."""

from tests.export.fixtures import python_repository, tiny_checkpoint, triton_server  # noqa: F401
