"""The tiny exported model (tests/export) that the load tests' gateway serves."""

from tests.export.fixtures import python_repository, tiny_checkpoint  # noqa: F401
