"""Run folders that protect finished work: one writer at a time, no litter from killed writes.

A run folder (``labkit train``'s ``out_dir``, a pipeline's ``runs/<name>``) is written by one
process at a time. :class:`RunLock` takes an exclusive ``fcntl.flock`` on ``<folder>/.labkit.lock``
(the holder's pid and command inside, for the message a second process gets). The kernel
releases a ``flock`` when its process ends, however it ends, so a lock left by a killed run is
never in the way; the file itself is removed on a normal release.

Also here:

* :func:`remove_stale_temporaries`: the ``.<name>.tmp-<pid>`` files that an atomic write
  (:func:`write_atomic`) leaves behind when its process is killed mid-write;
* :func:`read_jsonl`: a JSON-lines log whose last line was torn by a crash or a power loss
  (the line is dropped and reported; a bad line elsewhere is an error naming the line);
* :func:`move_aside`: move a folder's old outputs to a kept backup folder instead of deleting them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "RunFolderBusy",
    "RunFolderWarning",
    "RunLock",
    "move_aside",
    "read_json",
    "read_jsonl",
    "remove_stale_temporaries",
    "write_atomic",
]

LOCK_NAME = ".labkit.lock"
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")

# lock files this process holds, by resolved folder: [file object, holders]; the lock is
# re-entrant within a process (two Trainers on one folder in a notebook are the user's own doing)
_HELD: dict[Path, list[Any]] = {}


class RunFolderBusy(RuntimeError):
    """Another process is writing into the run folder."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired (a torn log line dropped, stale files removed)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder for this process; a second process fails at once.

    Args:
        folder: the run folder (created if missing).
        what: what this process does there, for the other process's message ("training").

    Use as a context manager, or :meth:`acquire` / :meth:`release`.

    Raises:
        RunFolderBusy: (from :meth:`acquire`) another live process holds the lock; the message
            names the folder and that process's pid and command.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a labkit run") -> None:
        self.folder = Path(folder)
        self.what = what
        self._key: Path | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock on this platform (Windows): no protection, as before
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return self
        for _ in range(10):
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise RunFolderBusy(self._busy_message(holder)) from None
            # the holder before us may have removed the file between our open and our lock
            try:
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        else:
            raise RunFolderBusy(f"{self.folder}: could not take the lock {self.path}")
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "what": self.what,
                    "command": " ".join(sys.argv)[:300],
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        )
        handle.flush()
        _HELD[key] = [handle, 1]
        self._key = key
        return self

    def _busy_message(self, holder: str) -> str:
        try:
            info = json.loads(holder)
        except json.JSONDecodeError:
            info = {}
        pid = info.get("pid")
        who = f"pid {pid}" if pid else "another process"
        if pid and not _pid_alive(int(pid)):  # its lock lives on in a child it started
            who += " (no longer running; a process it started still holds the lock)"
        since = f" since {info['since']}" if info.get("since") else ""
        what = info.get("what", "a labkit run")
        return (
            f"{self.folder} is in use by {what} ({who}{since}); wait for it to finish or "
            "write to another folder"
        )

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        handle = entry[0]
        try:
            os.unlink(key / LOCK_NAME)  # while still locked: no one else can hold this inode
        except OSError:
            pass
        handle.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``.<name>.tmp-<pid>`` beside ``path``, fsync, then ``os.replace``.

    A crash or a kill leaves either the old file or the new one, never a mix; a failed write
    (disk full) removes its temporary file and raises the ``OSError``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object file's contents (a marker, a ``metrics.json``), or None where it is missing,
    unreadable or not an object."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files of writes whose process is gone.

    Call with the folder's :class:`RunLock` held: then no other process writes there, and any
    temporary file not of this process is a leftover.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and int(match.group(1)) != os.getpid() and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """Records of a JSON-lines file, tolerating a torn last line.

    A last line that is not valid JSON is what a crash or a power loss mid-write leaves: it is
    dropped with a :class:`RunFolderWarning` naming the file (and cut from the file when
    ``repair``). A bad line before the last is an error.

    Raises:
        ValueError: a line other than the last is not a JSON object; names the file and line.
    """
    path = Path(path)
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records: list[dict] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(
                    f"{path}: line {number} is not a JSON record ({line[:60]!r}); the log is "
                    "damaged before its last line"
                ) from None
            warnings.warn(
                f"{path}: dropped a torn last line {number} ({line[:40]!r}...), left by a run "
                "that was killed while writing it",
                RunFolderWarning,
                stacklevel=2,
            )
            if repair:
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())
            break
        records.append(record)
    return records


def move_aside(folder: Path, names: list[str], backup: Path) -> Path:
    """Move the entries ``names`` of ``folder`` into the new folder ``backup`` (kept, not deleted).

    Returns:
        ``backup``.
    """
    backup.mkdir(parents=True, exist_ok=False)
    for name in names:
        source = folder / name
        if source.exists() or source.is_symlink():
            os.replace(source, backup / name)
    return backup
