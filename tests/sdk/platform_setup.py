"""A reference server of a test's own, set up as a customer does before a device connects.

Most SDK tests take the root conftest's ``platform`` (an account of their own on the session's
shared server). This is for the few that need the server process itself: killed and restarted
on its data directory, or started with other options (``--no-identity-publish``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from server_stub.launcher import running_server
from tests.common import Platform, setup_platform


@contextlib.contextmanager
def platform_server(workdir: Path, *, extra_args: tuple[str, ...] = ()) -> Iterator[Platform]:
    with running_server(workdir / "data", extra_args=extra_args) as server:
        yield setup_platform(server, workdir)
