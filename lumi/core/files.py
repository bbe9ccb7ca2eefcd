"""Atomic file and directory writes, hashing, and the output-directory contract shared by every stage.

Every stage writes into a temporary sibling of its output directory and renames it into place only when it has
finished, so an interrupted or failed run never leaves a half-written output that looks complete, and ``--force``
removes the previous output only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from lumi.core.errors import LumiError

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


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
        raise LumiError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LumiError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_json(text: str, source: str | os.PathLike) -> Any:
    """One JSON document; a syntax error becomes a LumiError naming ``source`` and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LumiError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def parse_json_lines(text: str, source: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of JSON-lines text; a bad line names ``source`` and its number."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise LumiError(f"{source}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


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


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing, non-empty output directory unless ``force`` is set; never deletes anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LumiError(f"{path}: output path exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise LumiError(f"{path}: output directory already exists; pass --force to replace it")
    return path


@contextlib.contextmanager
def staged_output_dir(path: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` atomically when the block succeeds.

    On failure the temporary directory is removed and ``path`` is left exactly as it was.
    """
    final = check_output_dir(path, force).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, final)


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
        shutil.rmtree(old, ignore_errors=True)
