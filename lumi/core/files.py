"""Atomic file and directory writes, hashing, and the output-directory contract shared by every stage.

Every stage writes into a temporary sibling of its output directory and renames it into place only when it has
finished, so an interrupted or failed run never leaves a half-written output that looks complete, and ``--force``
removes the previous output only after the new one is in place.
"""

from __future__ import annotations

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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lumi.core.errors import LumiError

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, manifest: str | os.PathLike, size: int | None = None,
                sha256: str | None = None) -> None:
    """Refuse a file whose size or sha256 differs from what ``manifest`` recorded for it (either may be None: not
    recorded, not checked), naming the file: a damaged output then fails here, in one line, instead of as a
    decoder traceback (zstd, arrow, an id out of range) somewhere downstream."""
    path = Path(path)
    if not path.is_file():
        raise LumiError(f"{path}: missing (listed in {manifest})")
    found = path.stat().st_size
    if size is not None and found != size:
        raise LumiError(f"{path}: damaged: {found} bytes, {manifest} records {size}; rebuild it")
    if sha256 is not None and sha256_file(path) != sha256:
        raise LumiError(f"{path}: damaged: its sha256 differs from the one {manifest} records "
                        "(modified after it was written?); rebuild it")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """One JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """Read a UTF-8 text file, turning a missing file or undecodable bytes into a LumiError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LumiError(f"{path}: {what} is a directory, not a file" if path.is_dir() else f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise LumiError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def text_lines(text: str) -> list[str]:
    """``text`` split into lines on ``\\n`` only (a ``\\r`` before it dropped), the way JSON lines are defined:
    ``str.splitlines`` also breaks on U+2028, U+0085, form feeds and more, which a JSON string may hold raw
    (``json.dumps(ensure_ascii=False)`` writes them so), and would cut such a record in two."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_json(text: str, source: str | os.PathLike) -> Any:
    """One JSON document; a syntax error (or nesting too deep to parse) becomes a LumiError naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LumiError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise LumiError(f"{source}: JSON nested too deeply to read") from None


def json_line_values(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) for every non-blank line of JSON-lines text, or (line number, None, cause) for a
    line that is not JSON (a torn record, a stray note): the one JSON-lines parser, split on ``\\n`` only
    (``text_lines``) so a raw U+2028 inside a string never cuts a record; a leading UTF-8 BOM is not part of the
    first record."""
    for number, line in enumerate(text_lines(text.removeprefix("\ufeff")), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
        except RecursionError:
            yield number, None, "JSON nested too deeply to read"


def parse_json_lines(text: str, source: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of JSON-lines text (``json_line_values``); a bad line is a
    LumiError naming ``source`` and its number."""
    for number, value, problem in json_line_values(text):
        if problem is not None:
            raise LumiError(f"{source}:{number}: {problem}")
        yield number, value


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning a missing file or a syntax error into a LumiError naming the file."""
    return parse_json(read_text(path, what), path)


def read_manifest_file(directory: str | os.PathLike, filename: str, expected_format: str, what: str) -> dict:
    """Read ``directory/filename`` and check its ``format`` field: the one way every stage opens another stage's
    output directory, so a missing directory, a missing manifest and a manifest of another kind read the same."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LumiError(f"{directory}: {what} directory not found")
    manifest = read_json(directory / filename, what=f"{what} manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise LumiError(f"{directory / filename}: not a {expected_format} manifest (format={found!r})")
    return manifest


def output_path(path: str | os.PathLike) -> Path:
    """The absolute output path; a symlink is followed, so ``--force`` replaces what it points to, not the link."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path.absolute()


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing, non-empty output directory unless ``force`` is set; never deletes anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LumiError(f"{path}: output path exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise LumiError(f"{path}: output directory already exists; pass --force to replace it")
    return path


# --- faults: full disks, read-only or uncreatable paths, concurrent builders, leftovers of killed runs ----------

# errno -> what the user is told; these are problems of the place being written, never bugs.
_STORAGE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EEXIST: "exists and is not a directory",  # mkdir(exist_ok=True) on a regular file
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error on the device",
}
_LOW_SPACE_BYTES = 1 << 20


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            stat = os.statvfs(candidate)
            return stat.f_bavail * stat.f_frsize
    return None


def storage_error(exc: BaseException, path: str | os.PathLike | None = None,
                  within: str | os.PathLike | None = None) -> LumiError | None:
    """``exc`` as a one-line LumiError naming the path and the cause when it is a storage fault (disk full, quota,
    read-only, no permission, a path that cannot be created), else None.

    ``path`` names the place being written when the error carries no file name, or when its file name lies inside
    ``within`` (a staging directory that is deleted on failure, so naming it would point nowhere). Libraries that
    wrap the OS error in their own type (torch.save: RuntimeError "file write failed", safetensors: SafetensorError
    "... (os error 28)") are recognised by the OS's message in their text or, failing that, by the file system of
    ``path`` being full at the moment of the failure -- probed before the staging directory is removed.
    """
    if isinstance(exc, LumiError) or not isinstance(exc, Exception):
        return None
    where = path
    filename = getattr(exc, "filename", None)
    if filename is not None and (within is None or not str(Path(filename).absolute()).startswith(str(within))):
        where = filename
    cause = None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_CAUSES:
        cause = _STORAGE_CAUSES[exc.errno]
    else:
        text = str(exc)
        cause = next((c for code, c in _STORAGE_CAUSES.items()
                      if os.strerror(code) in text or f"os error {code})" in text), None)
        if cause is None and path is not None:
            free = _free_bytes(Path(path))
            if free is not None and free < _LOW_SPACE_BYTES:
                cause = f"no space left on the device ({free} bytes free; {type(exc).__name__}: " \
                        f"{text.splitlines()[0] if text else ''})"
    if cause is None or where is None:
        return None
    return LumiError(f"{where}: {cause}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_name(name: str, kind: str) -> str:
    """``.NAME.tmp-<pid>-`` / ``.NAME.old-<pid>``: the pid tells a later run whether the writer is still alive."""
    return f".{name}.{kind}-{os.getpid()}"


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?:(?P<pid>\d+)(?:-.*)?|.*)")


def discard_dir(path: Path, name: str | None = None) -> None:
    """Delete a directory by renaming it to ``.NAME.del-<pid>`` first: a delete interrupted half-way then leaves
    a name no reader trusts (and ``remove_stale_leftovers`` finishes it), never a half-deleted ``NAME``, nor a
    half-deleted set-aside copy that could be taken for a finished one (``name``: the output it belongs to)."""
    doomed = path.parent / _staging_name(name or path.name, "del")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def _stale_leftovers(directory: Path, name: str | None) -> Iterator[tuple[Path, str, Path, str]]:
    """(entry, kind, its output, who left it) of every leftover of a process no longer running in ``directory``."""
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if pid is not None and (pid == os.getpid() or _process_alive(pid)):
            continue
        owner = f"process {pid}, no longer running" if pid else "an older version"
        yield entry, match["kind"], directory / match["name"], owner


def restore_set_aside(directory: Path, name: str | None = None) -> list[Path]:
    """Move back a set-aside ``.NAME.old-<pid>`` whose output ``NAME`` is missing (its process died between the two
    renames of ``replace_dir``): it is the only copy. Deletes nothing, so it runs before a command decides whether
    to refuse; returns the outputs restored."""
    restored = []
    for entry, kind, output, owner in list(_stale_leftovers(directory, name)):
        if kind == "old" and not output.exists():
            os.replace(entry, output)
            log.warning("restored %s from %s (left by %s between two renames)", output, entry, owner)
            restored.append(output)
    return restored


def set_aside_copies(path: str | os.PathLike) -> list[Path]:
    """The set-aside copies ``.NAME.old-<pid>`` of output ``path`` (left by a killed ``--force`` run): where the
    last finished copy waits while ``path`` holds an unfinished one."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if (m := _LEFTOVER.fullmatch(p.name))
                  and m["kind"] == "old" and m["name"] == path.name)


def remove_stale_leftovers(directory: Path, name: str | None = None,
                           complete: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove the staging (``.NAME.tmp-<pid>-*``), set-aside (``.NAME.old-<pid>``) and half-deleted
    (``.NAME.del-<pid>``) directories that processes no longer running left in ``directory`` (only those of output
    ``name`` when given), and say so.

    A set-aside directory is the last finished copy until its output is complete again: it is moved back when the
    output is missing, and kept (with a warning naming it) while ``complete(output)`` is false -- a run dir that a
    killed ``--force`` run left unfinished (``complete`` defaults to "exists": a staged output is complete once it
    has its name). Call it only after a command has decided to go ahead: a refused command deletes nothing.
    Staging names without a pid come from older versions: stale too.
    """
    complete = complete or (lambda output: output.exists())
    restore_set_aside(directory, name)
    removed = []
    for entry, kind, output, owner in list(_stale_leftovers(directory, name)):
        if kind == "old" and not complete(output):
            log.warning("%s is unfinished; the last finished copy is kept in %s (left by %s) until a run there "
                        "finishes", output, entry, owner)
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        log.warning("removed %s, left by %s", entry, owner)
        removed.append(entry)
    return removed


def _lock_holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    return "another process"


_HELD_LOCKS: set[Path] = set()  # outputs locked re-entrantly by this process (flock refuses a second lock of its own)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, reentrant: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` (a run dir, a stage output being built) for the block.

    The lock is ``flock`` on the sibling ``.NAME.lock``, which holds who took it; the kernel drops it when the
    holder dies, however it dies, so a killed run never leaves a lock that blocks the next one. A second process
    fails at once with a message naming the holder. The file is removed on release; a process that opened it just
    before that re-checks that the file it locked is still the one on disk. ``reentrant``: while held, this
    process may take the same lock again (a stage holds its output's lock for its whole run, and the staged write
    inside it takes it again); any other taker, this process's included, is refused.
    """
    final = output_path(path)
    if final in _HELD_LOCKS:  # this process holds it already (a stage locks its output for its whole run)
        yield final
        return
    created = [parent for parent in reversed(final.parents) if not parent.exists()]  # removed again if left empty
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.parent / f".{final.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # a read-only or unwritable parent: say so about the output, not the lock file
            raise storage_error(exc, final, within=lock_path) or exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LumiError(f"{final}: in use by {_lock_holder(lock_path)}; wait for it to finish or stop it") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the holder removed this file as we opened it: lock the new one
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as exc:  # a full disk
            raise storage_error(exc, final) or exc
        if reentrant:
            _HELD_LOCKS.add(final)
        yield final
    finally:
        _HELD_LOCKS.discard(final)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)
        for parent in reversed(created):  # a failed first run leaves no empty directories behind
            with contextlib.suppress(OSError):
                parent.rmdir()


class OutputClaim:
    """The one owner of the staging/replace protocol of an output ``path`` (a stage's output dir, a corpus build, a
    training run dir): every writer of an output goes through it, in this order, so each kill point leaves exactly
    one complete copy, which the next command finds, and a refused command deletes nothing.

    1. ``with OutputClaim(path) as claim``: the output's lock (``output_lock``), then a finished copy that a kill
       left set aside (``.NAME.old-<pid>``) while ``NAME`` is missing is moved back (it is the only copy).
    2. The command decides whether to go ahead (refusing deletes nothing); then ``claim.go_ahead()`` removes what
       dead processes left (staging, half-deleted dirs, set-aside copies of outputs that are complete again),
       keeping a set-aside copy while the output is not ``complete`` (default: it exists).
    3. Either ``claim.replace_with(new)`` (a staged or separately built dir: the old output is set aside, the new one
       renamed in, the old one deleted) or, for a writer that works in place (a run dir), ``claim.set_aside()``
       before it starts and ``claim.finish()`` once it is complete: the old copy is deleted only then.
    """

    def __init__(self, path: str | os.PathLike, complete: Callable[[Path], bool] | None = None):
        self.final = output_path(path)
        self.complete = complete or (lambda output: output.exists())
        self.aside: Path | None = None  # this process's set-aside copy of the output it replaces in place
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> "OutputClaim":
        self._lock.enter_context(output_lock(self.final))
        try:
            restore_set_aside(self.final.parent, self.final.name)
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.close()

    def set_aside_copies(self) -> list[Path]:
        return set_aside_copies(self.final)

    def go_ahead(self, inside: bool = False) -> None:
        """``inside``: also the leftovers of outputs staged within this one (a run dir's checkpoints)."""
        remove_stale_leftovers(self.final.parent, self.final.name, complete=self.complete)
        if inside:
            remove_stale_leftovers(self.final)

    def staging_dir(self) -> Path:
        """A new, empty ``.NAME.tmp-<pid>-*`` beside the output, with the permissions ``mkdir`` gives."""
        try:
            staging = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=_staging_name(self.final.name, "tmp") + "-"))
            os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp creates 0700; outputs get the permissions mkdir gives
        except OSError as exc:
            raise storage_error(exc, self.final.parent) or exc
        return staging

    def replace_with(self, new: Path) -> None:
        replace_dir(new, self.final)

    def set_aside(self) -> Path:
        """Before writing in place: the output moves to ``.NAME.old-<pid>`` until ``finish()``. When a killed earlier
        writer already set a complete copy aside and left the output incomplete, that copy is the one kept (renamed
        to this process) and the incomplete output goes: at every kill point exactly one complete copy exists."""
        self.aside = aside_path(self.final)
        stale = [path for path in self.set_aside_copies() if path != self.aside]
        if stale and not self.complete(self.final):
            os.replace(stale[0], self.aside)
            if self.final.exists():
                discard_dir(self.final)
        elif self.final.exists():
            os.replace(self.final, self.aside)
        return self.aside

    def finish(self) -> None:
        """The output written in place is complete: only now does the copy it replaces go."""
        if self.aside is not None and self.aside.exists():
            discard_dir(self.aside, self.final.name)
        self.go_ahead()


@contextlib.contextmanager
def staged_output_dir(path: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` atomically when the block succeeds.

    On failure the temporary directory is removed and ``path`` is left exactly as it was; a storage fault (full
    disk, read-only, ...) becomes one line naming ``path``. While the block runs ``path`` is locked
    (``output_lock``), and leftovers of killed earlier attempts at the same output are removed first.
    """
    with OutputClaim(path) as claim:
        check_output_dir(claim.final, force)  # a refused command deletes nothing
        claim.go_ahead()
        staging = claim.staging_dir()
        try:
            yield staging
        except BaseException as exc:
            error = storage_error(exc, claim.final, within=staging)
            shutil.rmtree(staging, ignore_errors=True)
            if error is not None:
                raise error from exc
            raise
        try:
            claim.replace_with(staging)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise storage_error(exc, claim.final) or exc


def aside_path(path: Path) -> Path:
    """Where an output being replaced waits, beside it, until its replacement is complete (then it is deleted)."""
    return path.with_name(f".{path.name}.old-{os.getpid()}")


def replace_dir(new: Path, final: Path) -> None:
    """Replace ``final`` (if it exists) by ``new``; the old one is removed only after the swap."""
    old = None
    if final.exists():
        old = aside_path(final)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        discard_dir(old, final.name)
