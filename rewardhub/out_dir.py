"""Checking an output location before any model loads: ``--out X is a file``, ``cannot create --out X: ...``.

The checks write nothing that stays: an existing directory gets a temporary file created and removed in it; a
missing one gets a temporary directory created and removed in its nearest existing parent (what creating it
later needs). Trying beats ``os.access``, which says yes to root on a read-only file system or ``/proc``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rewardhub.errors import ConfigError


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise ConfigError unless ``path`` is a writable directory or one that can be created.

    Example messages: ``--out runs/x is a file, not a directory``; ``cannot create --out /proc/x: No such file
    or directory``; ``cannot write to --out /ro/run: Read-only file system``.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a directory; give a directory (it is created if missing)")
    if path.is_dir():
        _check_writable(path, f"cannot write to {flag} {path}")
        return
    _check_can_create(path, flag)


def check_out_file(path: str | os.PathLike, flag: str = "--output") -> None:
    """Raise ConfigError unless a file can be written at ``path`` (a results file such as ``--output``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name (e.g. {path / 'results.jsonl'})")
    parent = path.parent
    if parent.is_dir():
        _check_writable(parent, f"cannot write {flag} {path}", f" (in {parent})")
        return
    if parent.exists():
        raise ConfigError(f"cannot write {flag} {path}: {parent} is a file, not a directory")
    _check_can_create(parent, flag, shown=path)


def _check_writable(directory: Path, problem: str, where: str = "") -> None:
    """ConfigError ``problem: reason where`` unless a file can be created (and is removed again) in ``directory``."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"{problem}: {_reason(exc)}{where}") from None


def _check_can_create(path: Path, flag: str, shown: Path | None = None) -> None:
    """A directory can be made in the nearest existing parent of ``path`` (``shown`` is what the user gave)."""
    shown = shown or path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create {flag} {shown}: {parent} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rewardhub-check-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot create {flag} {shown}: {_reason(exc)} (in {parent}); choose another "
                          "location") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
