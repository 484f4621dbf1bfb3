"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

Also the kit's one rule for state files it opens in place (ledgers, reports, logs it appends to
or truncates): :func:`open_no_follow` never follows a symbolic link and accepts only a regular
file, so a link planted at ``sn-ledger.jsonl`` cannot make the kit append to, or truncate, the
file it points at. Files replaced with :func:`atomic_write` need no such care: ``rename``
replaces a link itself, never its target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def atomic_write(path: str | Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Write ``data`` to ``path``: temporary file in the same directory, fsync, rename, fsync dir.

    The temporary file is created with ``mode`` from the start, so a private key is never
    readable by others, not even for an instant.
    """
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp_name).unlink()
        raise
    fsync_directory(directory)


#: O_NOFOLLOW and O_NONBLOCK are POSIX (Linux, macOS, the boards); where they do not exist
#: (Windows) only the regular-file check applies.
_NO_FOLLOW_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


def open_no_follow(path: str | Path, flags: int, mode: int = PUBLIC_FILE_MODE) -> int:
    """``os.open`` for a state file the kit changes in place; refuses links and non-files.

    ``O_NOFOLLOW`` makes the kernel refuse a symbolic link as the last component (checked and
    opened in one step, so there is no window between a check and the open); the descriptor
    is then checked to be a regular file (a FIFO or a device would block or swallow writes).
    The open itself is non-blocking so that a FIFO cannot hang it. Refusals are ``OSError``
    whose ``strerror`` says what is wrong and what to do, for the caller's own message.
    """
    try:
        fd = os.open(path, flags | _NO_FOLLOW_FLAGS, mode)
    except OSError as exc:
        # ELOOP: Linux, macOS; EMLINK: the BSDs; ENXIO: a FIFO nobody reads (O_NONBLOCK)
        if exc.errno in (errno.ELOOP, errno.EMLINK) or (
            exc.errno == errno.ENXIO and _is_fifo(path)
        ):
            raise OSError(exc.errno, _refusal(path), str(path)) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, _refusal(path), str(path))
        if _NO_FOLLOW_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_fifo(path: str | Path) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


def _refusal(path: str | Path) -> str:
    if os.path.islink(path):
        return (
            "it is a symbolic link; the kit never changes a state file through a link (the "
            "file it points at would be changed): replace the link with a regular file or "
            "choose another path"
        )
    return "it is not a regular file (a FIFO, device or directory): choose a regular file"


def fsync_directory(directory: str | Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def loose_permissions(path: str | Path) -> bool:
    """True when group or others may read or write the file."""
    return bool(Path(path).stat().st_mode & 0o077)
