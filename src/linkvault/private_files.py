"""Files only their owner may read: key files and API key files."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from linkvault.errors import LinkvaultError


def read_private_text(path: Path, what: str, error: type[LinkvaultError]) -> str:
    """The ASCII text of an owner-only file; `error` names `what` on any problem."""
    try:
        with path.open("rb") as handle:
            _check_private(path, os.fstat(handle.fileno()).st_mode, what, error)
            raw = handle.read()
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not ASCII text") from None


def write_private_file(path: Path, content: bytes, *, replace: bool) -> bool:
    """Write `content` with mode 0600, whole or not at all.

    With `replace`, an existing file is swapped for the new one; without, an existing file is
    kept and False is returned, so concurrent first starts agree on one file and no reader
    ever sees it half written.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def _check_private(path: Path, mode: int, what: str, error: type[LinkvaultError]) -> None:
    if os.name == "nt":
        return
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise error(
            f"{what} {path} is accessible to group or others (mode "
            f"{stat.S_IMODE(mode):04o}); restrict it with `chmod 600 {path}`"
        )


def _fsync_directory(directory: Path) -> None:
    # A new or renamed entry is durable only once its directory is; not possible on Windows.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
