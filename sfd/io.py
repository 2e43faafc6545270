"""Atomic artifact writes, the temporary files they leave when killed, directory locks, content hashes.

Every checkpoint, latent shard, sample shard, npz and metrics file goes through `atomic_write` or
`atomic_path`: write to a temporary file in the destination directory, fsync, give it the mode a
plain `open` would (0666 minus the umask), rename over the target, fsync the directory. A killed
job therefore leaves either the old file or the new one, never half of one; what it does leave is
its temporary file, named `.<target>.<random>.sfd-tmp<suffix>` so that `sweep_temps` recognises
it on the next run (together with the `.tmpXXXXXX` files safetensors writes itself).

Resumable commands hold `directory_lock` on their output directory, so a second concurrent run
refuses instead of interleaving with the first. Write failures a user can fix (full disk,
read-only directory) become one-line `OutputError`s naming the file.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from sfd.errors import InputError, MissingInputError, UserError

log = logging.getLogger("sfd.io")

TEMP_MARK = ".sfd-tmp"
LOCK_NAME = ".sfd-lock"
# safetensors' save_file writes `.tmp` + 6 random characters next to its target, then renames it.
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


class OutputError(UserError):
    """An output that cannot be written: full disk, read-only or foreign directory."""


class LockedError(UserError):
    """The output directory is in use by another running command."""


# ----------------------------------------------------------------------------
# Write failures a user can act on.


def _size(nbytes: int) -> str:
    """1000 B, 136.5 KiB, 9.8 GiB."""
    if nbytes < 1024:
        return f"{nbytes} B"
    exponent, unit = next((e, u) for e, u in ((3, "GiB"), (2, "MiB"), (1, "KiB")) if nbytes >= 1024**e)
    return f"{nbytes / 1024**exponent:.1f} {unit}"


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(path)).free


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _errno(err: Exception) -> int | None:
    """The errno of a write failure: OSError's own, or the one a Rust writer (safetensors) names."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found[1]) if found else None


@contextlib.contextmanager
def output_errors(path):
    """Turn a full disk or a permission error while writing `path` into a one-line OutputError."""
    try:
        yield
    except Exception as err:
        code = _errno(err)
        if code in _DISK_FULL:
            free = _size(_free_bytes(Path(path).parent))
            raise OutputError(
                f"{path}: disk full while writing ({free} free there); free some space and rerun"
            ) from None
        if code in _NOT_WRITABLE:
            raise OutputError(
                f"{path}: cannot write here ({os.strerror(code)}); fix the permissions or "
                "choose another output path"
            ) from None
        raise


def require_writable(path, directory: bool = False) -> None:
    """Check, before any work, that the file `path` (or, with `directory`, files in the directory
    `path`) can be created or replaced: the first existing directory on the way is writable."""
    path = Path(path)
    if path.is_dir() and not directory:
        raise OutputError(f"{path}: is a directory; give a file name")
    where = _existing_ancestor(path if directory else path.parent)
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(
            f"{path}: cannot write here ({where} is not a writable directory); fix the "
            "permissions or choose another output path"
        )


def require_free_space(path, nbytes: int) -> None:
    """Check that the file system `path` would go to has `nbytes` free (known output sizes)."""
    free = _free_bytes(path)
    if free < nbytes:
        raise OutputError(
            f"{path}: needs {_size(nbytes)}, only {_size(free)} free there; free some space "
            "or choose another output path"
        )


# ----------------------------------------------------------------------------
# Atomic writes and their temporary files.


def _umask_mode() -> int:
    """0666 minus the process umask: the mode `open(path, 'w')` would give a new file. Read from
    /proc where it can be: setting the umask to read it races with other threads creating files."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            return 0o666 & ~int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file(path: Path, suffix: str = "") -> tuple[int, Path]:
    """(fd, path) of a new temporary file next to `path`, named so that `sweep_temps` finds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_MARK + suffix)
    return fd, Path(tmp)


def _publish(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it the umask mode, rename it over `path`, fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Yield a file object; on clean exit it atomically replaces `path`, on error it vanishes."""
    path = Path(path)
    with output_errors(path):
        fd, tmp = temp_file(path)
        try:
            with os.fdopen(fd, mode) as f:
                yield f
            _publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path for writers that insist on a filename (np.savez, safetensors); it
    keeps the target's suffix, which some of them append otherwise."""
    path = Path(path)
    with output_errors(path):
        fd, tmp = temp_file(path, path.suffix)
        os.close(fd)
        try:
            yield tmp
            _publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def is_temp(path: Path) -> bool:
    """Whether `path` is a temporary file of an unfinished atomic write (ours or safetensors')."""
    name = Path(path).name
    return (name.startswith(".") and TEMP_MARK in name) or bool(_SAFETENSORS_TEMP.fullmatch(name))


def sweep_temps(directory, name: str | None = None) -> list[Path]:
    """Delete the temporary files a killed run left in `directory` (only those of target `name`
    when given: the directory is shared); returns them. Call it holding the directory's lock."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    swept = []
    for path in directory.iterdir():
        mine = name is None or path.name.startswith(f".{name}.")
        if path.is_file() and mine and is_temp(path):
            path.unlink(missing_ok=True)
            swept.append(path)
    if swept:
        log.warning(
            "%s: removed %d temporary file(s) of an interrupted run: %s",
            directory,
            len(swept),
            ", ".join(p.name for p in sorted(swept)),
        )
    return swept


def replace_durably(src, dst) -> None:
    """fsync a finished file, rename it over `dst`, fsync the directory (resumed downloads)."""
    src, dst = Path(src), Path(dst)
    with output_errors(dst):
        _publish(src, dst)


class _RecordingWriter:
    """A write-only file that remembers the OSError of a failed write: torch.save reports it as a
    RuntimeError without the errno, which is what tells a full disk from a bug."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def append_jsonl(record: dict, path) -> None:
    """Append one JSON line to a log (logs grow in place; a resume truncates what a kill tore)."""
    with output_errors(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def torch_save(obj, path) -> None:
    import torch

    with atomic_write(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def write_json(obj, path) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_text(text: str, path) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------
# One running command per output directory.


def _open_locked(path: Path) -> int | None:
    """An fd holding flock on the file at `path` (the file still there), or None if someone holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file between our open and flock: retry


def _remove_empty(directory: Path, top: Path | None) -> None:
    """rmdir `directory` and its parents up to `top` (the first one this run created) while empty."""
    if top is None:
        return
    for path in [directory, *directory.parents]:
        with contextlib.suppress(OSError):
            path.rmdir()
        if path == top:
            return


@contextlib.contextmanager
def directory_lock(directory, sweep: tuple[str, ...] = (".",)):
    """Hold an exclusive flock on `<directory>/.sfd-lock` (pid and host inside) while the body runs,
    after sweeping the temporary files of interrupted runs from the `sweep` subdirectories.

    A second run refuses with the holder's name. The kernel releases the flock of a killed
    process, so a stale lock file never blocks: the next run takes it over. The file is removed on
    exit, and a directory created here is removed again if the body fails before writing into it.
    """
    directory = Path(directory)
    top = next((p for p in reversed([directory, *directory.parents]) if not p.exists()), None)
    path = directory / LOCK_NAME
    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path)
    if fd is None:
        holder = path.read_text().strip() or "another process"
        raise LockedError(f"{directory}: in use by {holder} (lock file {path}); wait for that run or stop it")
    try:
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        for sub in sweep:
            sweep_temps(directory / sub)
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(directory, top)
        raise
    path.unlink(missing_ok=True)
    os.close(fd)


def sha256(path, chunk: int = 1 << 20) -> str:
    """Content hash of an input file; a missing or unreadable one is a one-line user error."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    return h.hexdigest()
