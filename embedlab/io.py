"""Atomic file writes and content hashing.

Every file embedlab writes goes through :func:`atomic_write`: data is written to a temporary file in the same
directory, flushed and fsync'ed, then renamed over the target. A kill at any moment leaves either the old file or
the new one, never a partial file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit, fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # read-only or full file system: name the user's file, not the hidden temporary
        e.filename = str(path)
        raise
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or str(e.filename) == tmp):
            e.filename = str(path)  # a failed write (e.g. ENOSPC) names the file it was writing, not the temporary
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (symbolic links followed); one line for anything else, before anything opens
    it: opening a FIFO blocks until a writer comes, a device may never end."""
    import stat

    from embedlab.errors import EmbedlabError

    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise EmbedlabError(f"{what} not found: {p}") from None
    except OSError as e:  # a symlink loop, a name too long, permission denied on a parent
        raise EmbedlabError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise EmbedlabError(f"{what} {p} is {kind}, not a regular file; give a regular file")
    return p


def check_npz_sizes(path: str | os.PathLike, what: str = "arrays file", keys: Any = None) -> None:
    """Refuse, before numpy allocates anything, an ``.npz`` whose arrays (those named in ``keys``, default all)
    would not fit: a member whose ``.npy`` header claims more bytes than the member holds (a 149 GB shape in a
    few-byte file), or members decompressing to more than half the machine's memory (a zip bomb). One line naming
    the file, the array and the sizes. Files numpy cannot read are left to ``numpy.load``'s own error."""
    import zipfile

    import numpy as np

    from embedlab.errors import EmbedlabError

    p = Path(path)
    limit = _memory_bytes() // 2
    total = 0
    try:
        with zipfile.ZipFile(p) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or (keys is not None and name not in keys):
                    continue
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(fh))
                nbytes = int(np.prod(shape, dtype=object) or 0) * dtype.itemsize
                if nbytes > info.file_size:
                    raise EmbedlabError(f"{what} {p}: array {name!r} claims shape {shape} ({_gib(nbytes)}) but "
                                        f"holds {info.file_size:,} bytes; the file is corrupt or crafted")
                total += info.file_size
                if total > limit:
                    raise EmbedlabError(f"{what} {p}: its arrays decompress to more than {_gib(limit)}, half of "
                                        f"this machine's memory; analyse fewer examples (or a smaller file)")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, TypeError):
        return  # not a readable .npz: numpy.load says so
    return


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n:,} bytes"


def _memory_bytes() -> int:
    """Physical memory of this machine (or 16 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str, hint: str) -> Iterator[None]:
    """Hold ``<parent>/.<name>.lock`` while ``target`` (a folder or file) is written by this process: a second
    embedlab process that would write the same target fails at once with :class:`~embedlab.errors.BusyError`
    ("another embedlab process is <what> <target> now …; <hint>") instead of interleaving with the first.

    POSIX advisory lock (``flock``: released by the kernel if the process dies, so a killed holder leaves no stale
    lock); the lock file is removed when done, and a lock taken on a file another process already removed does not
    count. No lock on Windows."""
    from embedlab.errors import BusyError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    busy = BusyError(f"another embedlab process is {what} {target} now (lock {lock}); {hint}")
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            if os.stat(lock).st_ino != os.fstat(fh.fileno()).st_ino:  # its holder finished and removed it meanwhile
                raise busy
        except FileNotFoundError:
            raise busy from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still holding it: whoever opens the path next makes a new file
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


DIGEST_KEY = "digest"


def json_digest(obj: dict[str, Any]) -> str:
    """SHA-256 of ``obj`` without its ``digest`` key, as canonical JSON (sorted keys, no whitespace, ASCII): what a
    results file records about itself when written, so a later edit (by hand, or a torn copy) is detected."""
    body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def with_digest(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``digest`` = :func:`json_digest` of the rest (last key)."""
    return {**{k: v for k, v in obj.items() if k != DIGEST_KEY}, DIGEST_KEY: json_digest(obj)}


def digest_ok(obj: Any) -> bool | None:
    """True if ``obj``'s recorded digest matches its content, False if it does not, None if it records none."""
    if not isinstance(obj, dict) or not isinstance(obj.get(DIGEST_KEY), str):
        return None
    try:
        return obj[DIGEST_KEY] == json_digest(obj)
    except (TypeError, ValueError):
        return False
