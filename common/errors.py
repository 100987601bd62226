"""The one error class the `apron` command prints without a traceback.

A stage's CLI (`<stage>/cli.py`) translates its library's errors (DataError, ExportError, ...) into
`UserFacingError`; the root `cli.py` catches it and exits 2. It lives here, not in `cli.py`, so no
library or stage module ever imports the entry script.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """A mistake in the user's input (file, flag, data line): printed without a traceback."""
