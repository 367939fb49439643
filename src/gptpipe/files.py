"""Atomic writes and hashing: a reader never sees half a file.

Every output is written to a temp file, fsynced and then renamed over the
target, so a crash or a full disk leaves either the old file or nothing, never
a partial one. The temp file lives in `.gptpipe/tmp/` of the working directory
(the project root when DVC runs a stage; ignored by git and DVC, and on the same
filesystem, so the rename stays atomic). A SIGKILL mid-write can leave a temp
file there, never beside an output; the next write sweeps the temp files of
processes that no longer exist.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

TEMP_DIR = Path(".gptpipe") / "tmp"

# mkstemp/mkdtemp create 0600/0700; outputs get the modes open()/mkdir() would give.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _sweep(folder: Path, pattern: re.Pattern) -> None:
    """Remove the temp files and folders in `folder` whose writing process is gone."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and int(match.group("pid")) != os.getpid() \
                and not _pid_alive(int(match.group("pid"))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


_TEMP_NAME = re.compile(r"(?P<pid>\d+)\..*")


def _temp_home(target: Path) -> tuple[Path, str]:
    """Where `target`'s temp file goes, and its name prefix.

    Inside the working directory: `.gptpipe/tmp/` (what git and DVC ignore), when it
    is on the target's filesystem. Elsewhere (a path outside the project): beside
    the target, hidden. Either way stale temp files of dead processes are swept."""
    try:
        inside = target.resolve().is_relative_to(Path.cwd().resolve())
    except OSError:
        inside = False
    if inside:
        home = Path.cwd() / TEMP_DIR
        try:
            home.mkdir(parents=True, exist_ok=True)
            if home.stat().st_dev == target.parent.stat().st_dev:
                _sweep(home, _TEMP_NAME)
                return home, f"{os.getpid()}.{target.name}."
        except OSError:
            pass
    beside = re.compile(rf"\.{re.escape(target.name)}\.(?P<pid>\d+)\..*\.tmp")
    _sweep(target.parent, beside)
    return target.parent, f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path for `target`; rename it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    home, prefix = _temp_home(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix + ".tmp", dir=home)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise UserError(f"{target}: cannot write: {_why(exc)}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _why(exc: OSError) -> str:
    """What went wrong; a short write (numpy's "N requested and M written") has no errno."""
    return exc.strerror or f"{exc} (is the disk full?)"


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def to_json(obj: object) -> str:
    """Canonical JSON: sorted keys, fixed indent, so reruns give the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(target: str | os.PathLike, obj: object) -> None:
    write_text(target, to_json(obj))


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from exc


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name, then swap it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    home, prefix = _temp_home(target)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=home))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if target.exists():
            # moved aside into the temp area, so a kill here leaves nothing beside it
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old.tmp", dir=home))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{target}: cannot write: {_why(exc)}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
