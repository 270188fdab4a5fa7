"""Crash-safe file replacement.

A reader must only ever see the old file or the new one: write a temporary file in the same
directory, fsync it, ``os.replace`` it over the target, fsync the directory. A process killed
at any moment leaves at worst a stray ``.tmp-*`` file, which later writers remove.

Permissions: a replaced file keeps its mode (and owner / group where this process may set
them), so an edit never locks out the other users or a web server that could read it. A new
file is created like ``open(path, "w")`` creates one, with mode 0o666 filtered by the process
umask (or the directory's default ACL): the kernel applies it at creation, so the umask is never
read or changed (``os.umask`` would change it for every thread). Directories: the same with
0o777.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Optional

_CREATE_TRIES = 100


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tmp_name(target: Path) -> str:
    return f".{target.name}.tmp-"


def remove_stale_tmp(target: Path) -> None:
    """Delete temporary files left by writers that were killed mid-write."""
    target = Path(target)
    for p in target.parent.glob(tmp_name(target) + "*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _existing(target: Path) -> Optional[os.stat_result]:
    """The stat of the file ``target`` replaces (symlinks followed), or None for a new file."""
    try:
        return os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _copy_owner_and_mode(fd_or_path: int | str, old: os.stat_result) -> None:
    """Give a new file / directory the owner, group and mode of the one it replaces, as far as
    permitted (chown first: it may clear set-id bits; a group this user is not in is skipped)."""
    cur = os.stat(fd_or_path)
    if (cur.st_uid, cur.st_gid) != (old.st_uid, old.st_gid):
        for uid, gid in ((old.st_uid, old.st_gid), (-1, old.st_gid)):
            try:
                os.chown(fd_or_path, uid, gid)
                break
            except OSError:
                continue
    with contextlib.suppress(OSError):
        os.chmod(fd_or_path, stat.S_IMODE(old.st_mode))


def _create_tmp_file(target: Path, old: Optional[os.stat_result]) -> tuple[int, str]:
    """A fresh temporary file beside ``target`` (O_EXCL: never an existing file or a symlink)."""
    # Replacing: 0o600 until the old mode is copied (the new bytes are never more visible than
    # the old ones were); new: 0o666, which the kernel filters through the umask.
    mode = 0o600 if old is not None else 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(_CREATE_TRIES):
        tmp = str(target.parent / (tmp_name(target) + secrets.token_hex(6)))
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        if old is not None:
            try:
                _copy_owner_and_mode(fd, old)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file; on clean exit it atomically becomes ``target`` (mode, owner and
    group of a replaced file kept; a new file gets 0o666 & ~umask)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_tmp_file(target, _existing(target))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _make_tmp_dir(target: Path) -> Path:
    """A fresh directory beside ``target``, created with 0o777 (the kernel applies the umask)."""
    for _ in range(_CREATE_TRIES):
        tmp = target.parent / (tmp_name(target) + secrets.token_hex(6))
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name; on clean exit it replaces ``target``.

    Used for bundles: a failed conversion leaves no half-written bundle behind. The directory
    gets the mode (and owner / group where permitted) of the directory it replaces, else
    0o777 & ~umask, like ``mkdir``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_tmp_dir(target)
    try:
        yield tmp
        old_st = _existing(target)
        if old_st is not None and stat.S_ISDIR(old_st.st_mode):
            _copy_owner_and_mode(str(tmp), old_st)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
