"""Where runs go, and using that store safely: its URI, whether it answers, retries
while a sqlite store is locked, and a lock for what one process at a time may do.

The tracking URI is MLFLOW_TRACKING_URI when set, else a sqlite store at the
project root (from DVC_ROOT under `dvc exp`), so `mlflow ui` started in the
repo shows every run. Nothing here imports mlflow: the train stage checks the
store before training without MLflow's seconds of imports.
"""
from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..lineage import repo_root

_LOCK_RETRIES = 20


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before training, not after, when the tracking store cannot be used: a
    server that does not answer, or refuses the credentials given in
    MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN. One request, the
    cheapest authenticated one, without importing mlflow (seconds). Credentials
    from elsewhere (~/.mlflow/credentials, MLFLOW_TRACKING_AUTH, AWS SigV4) are
    MLflow's to judge: a refusal without ours is left to it."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        import requests

        user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                          os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        ours = bool(user and password or token) and not (
            os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_AWS_SIGV4"))
        try:
            response = requests.get(
                uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                params={"max_results": 1}, timeout=timeout_s,
                headers={"Authorization": f"Bearer {token}"} if ours and token else {},
                auth=(user, password) if ours and user and password else None)
        except requests.RequestException as exc:
            raise UserError(f"MLflow tracking server {redact_uri(uri)} is unreachable "
                            f"({type(exc).__name__}); start it or unset "
                            "MLFLOW_TRACKING_URI") from None
        if response.status_code in (401, 403):
            if ours:
                raise UserError(
                    f"MLflow tracking server {redact_uri(uri)} refused the credentials (HTTP "
                    f"{response.status_code}); check MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        elif response.status_code >= 500:
            raise UserError(f"MLflow tracking server {redact_uri(uri)} is unreachable (HTTP "
                            f"{response.status_code}); start it or unset MLFLOW_TRACKING_URI")
    elif scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"MLflow store {uri}: folder {folder} is missing or not writable")


class TrackingUnreachable(UserError):
    """The tracking server went away mid-stage (after MLflow's own HTTP retries)."""


def _connection_lost(exc: BaseException) -> bool:
    """MLflow wraps the requests error in an MlflowException, chained as context."""
    import requests

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, (requests.ConnectionError, requests.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_locked(fn, *args, retry_on: tuple[str, ...] = (), **kwargs):
    """fn(*args, **kwargs), for every call that reads or writes the store: sqlite
    allows one writer, so parallel `dvc exp run -j 2` jobs wait their turn. A server
    that stopped answering becomes one line saying what to do. `retry_on`: other
    errors (by a piece of their message) worth a retry, for an idempotent fn only."""
    for attempt in range(_LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _connection_lost(exc):
                raise TrackingUnreachable(
                    f"MLflow tracking server {redact_uri(tracking_uri())} stopped answering "
                    "mid-stage; what was done is kept (a training checkpoint too): rerun "
                    "`dvc repro` once the server is back, it resumes the same run") from None
            if not any(text in str(exc) for text in ("database is locked", *retry_on)) \
                    or attempt == _LOCK_RETRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


@contextlib.contextmanager
def store_lock(uri: str, purpose: str = "init") -> Iterator[None]:
    """One process at a time does `purpose` on a sqlite store: parallel `dvc exp run
    -j 2` jobs on a new mlflow.db otherwise race through the schema migrations and
    fail ("duplicate column name"), or both move the champion alias. The lock file
    sits beside the store (gitignored)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///"):] + f"-{purpose}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
