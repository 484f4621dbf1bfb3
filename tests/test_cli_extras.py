"""A plain ``pip install iot-x509-kit`` (no extras) still gives a working, explanatory CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: Run the CLI with the server and simulator stacks made unimportable, as on a base install.
BASE_INSTALL = (
    "import sys\n"
    "for name in ('fastapi', 'uvicorn', 'starlette', 'uvloop', 'locust', 'gevent'):\n"
    "    sys.modules[name] = None\n"
    "from iotx509.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BASE_INSTALL, *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_part_without_the_extras() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("device", "ca", "certs", "provision", "server", "platform", "fleet", "demo"):
        assert f"    {command} " in result.stdout


@pytest.mark.parametrize("args", [["server", "run", "--data-dir", "{tmp}"], ["demo"]])
def test_server_commands_name_the_extra_to_install(args: list[str], tmp_path: Path) -> None:
    result = _cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1
    assert "needs the 'server' extra: pip install 'iot-x509-kit[server]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_device_side_works_on_a_base_install(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key, _ = pki.write_device("a1B2c3D4e5F", "base-install", directory=tmp_path)
    # The server is not reachable: the SDK must still load the pair and explain the failure.
    result = _cli(
        "device",
        "connect",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--server-ca",
        str(cert),
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--timeout",
        "3",
    )
    assert result.returncode == 69  # network (device_sdk/exit_codes.py)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.stderr
    assert "nothing accepts connections at 127.0.0.1:1" in last
    assert "is the server running and the port right?" in last
