"""Real servers on 127.0.0.1 for the tests, each started and stopped by the test:

- `PostgresCluster`: a throwaway PostgreSQL cluster (Debian's `postgresql`
  package, scripts/install_postgres.sh) in a temp dir, on a free loopback port,
  its unix socket in that dir. As root, its binaries run as the `postgres` user.
- `S3Server`: moto's server mode, an S3-compatible API standing in for S3/MinIO
  (as in DVC's and MLflow's own tests): the MLflow artifact store and the DVC remote.
- `MlflowServer`: a real `mlflow server`, on sqlite by default or on a
  PostgreSQL backend with artifacts proxied into s3://... on the S3 server.

Every server runs in its own process group, so `stop` ends its whole tree, and
`start_*` helpers register the stop as a finalizer before starting."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from helpers import BIN, require

STARTUP_TIMEOUT_S = 180  # ~30 s on 2 busy cores; fail, never hang, past this
LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
# moto accepts any key; real S3/MinIO would check them.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing(what: str, install: str) -> None:
    """A tool the test needs is absent: fail in CI (CI=true), else skip; both name the fix."""
    require(False, what, install)


def _stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, the process group `proc` leads; reap it."""
    if proc is None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # stragglers of the group, even when the leader went first
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, what: str,
                  timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not healthy after {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, n_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "(no log)"


# ---- PostgreSQL ----------------------------------------------------------------

def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """initdb + pg_ctl in a temp dir; trust auth on 127.0.0.1 only; database `mlflow`.

    The temp dir is made outside pytest's tmp_path (root-only as root) so the
    `postgres` user can reach it."""

    USER = "mlflow"

    def __init__(self):
        self.bindir = postgres_bindir()
        if self.bindir is None:
            missing("PostgreSQL (initdb under /usr/lib/postgresql/<ver>/bin)",
                    "bash scripts/install_postgres.sh (.ci/run runs it)")
        self.root = Path(tempfile.mkdtemp(prefix="gptpipe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3)
        self.url = f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/mlflow"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            account = pwd.getpwnam("postgres")
            for path in (self.root,):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL, cwd=self.root)
        if result.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}\n{_tail(self.log)}")

    def start(self) -> "PostgresCluster":
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust",
                      "--encoding=UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=40")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(STARTUP_TIMEOUT_S), "start")
        self.running = True
        if not (self.root / ".created").exists():
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER,
                      "mlflow")
            (self.root / ".created").touch()
        return self

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- S3 (moto) -------------------------------------------------------------------

class _ServerProcess:
    """A server the tests start in its own process group, wait for, and stop with
    its group. Subclasses set `root`, `log` and `proc` (None while stopped)."""
    root: Path
    log: Path
    proc: subprocess.Popen | None = None

    def _launch(self, cmd: list[str], env: dict, health_url: str, what: str,
                timeout_s: float, log_mode: str = "ab") -> None:
        with open(self.log, log_mode) as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            _wait_healthy(self.proc, health_url, self.log, what, timeout_s)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop_group(proc)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash: no graceful shutdown),
        and reap it; `start` again reuses the port."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class S3Server(_ServerProcess):
    """`python -m moto.server` on 127.0.0.1: S3's API, in memory, any key accepted."""

    def __init__(self, root: Path):
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError as exc:
            missing(f"moto's server mode or boto3 ({exc.name})",
                    "pip install -e '.[dev]' (moto[server], boto3)")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "moto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> "S3Server":
        self._launch([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                      str(self.port)], {**os.environ, **LOOPBACK}, self.url + "/moto-api/",
                     "moto server", timeout_s, log_mode="wb")
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# ---- MLflow ----------------------------------------------------------------------

class MlflowServer(_ServerProcess):
    """`mlflow server` on 127.0.0.1, artifacts proxied by the server.

    Default: a sqlite backend and local artifacts under `root`. With
    `backend_uri` (postgresql://...) and `artifacts_destination` (s3://...)
    plus `extra_env` (MLFLOW_S3_ENDPOINT_URL, AWS_*): the team set-up. `app_name`
    (basic-auth) and `auth` (the REST helpers' credentials) for an auth server. Runs in its own
    process group (mlflow spawns uvicorn under it), so `stop` ends the whole tree;
    `start` again after `stop` reuses the port and the stores."""

    def __init__(self, root: Path, backend_uri: str | None = None,
                 artifacts_destination: str | None = None, extra_env: dict | None = None,
                 app_name: str | None = None, auth: tuple[str, str] | None = None):
        self.app_name, self.auth = app_name, auth
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = root / "server.db"
        self.artifacts = root / "artifacts"
        self.backend_uri = backend_uri or f"sqlite:///{self.db}"
        self.artifacts_destination = artifacts_destination or str(self.artifacts)
        self.extra_env = extra_env or {}
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> "MlflowServer":
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner: less CPU
        env.update(LOOPBACK)
        env.update(self.extra_env)
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", self.artifacts_destination]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        self._launch(cmd, env, self.url + "/health", "mlflow server", timeout_s)
        return self

    def log_tail(self, n_chars: int = 4000) -> str:
        return _tail(self.log, n_chars)

    # REST helpers
    def get(self, endpoint: str, **params) -> dict:
        response = requests.get(f"{self.url}{endpoint}", params=params, timeout=30,
                                auth=self.auth)
        assert response.ok, f"GET {endpoint} {params}: {response.status_code} {response.text}"
        return response.json()

    def post(self, endpoint: str, body: dict) -> dict:
        response = requests.post(f"{self.url}{endpoint}", json=body, timeout=30,
                                 auth=self.auth)
        assert response.ok, f"POST {endpoint} {body}: {response.status_code} {response.text}"
        return response.json()


def start_server(request: pytest.FixtureRequest, root: Path, **kwargs) -> MlflowServer:
    """Start a server whose teardown always runs, even if start-up fails."""
    server = MlflowServer(root, **kwargs)
    request.addfinalizer(server.stop)
    return server.start()


class TeamServers:
    """The team set-up on loopback: PostgreSQL, an S3 server with a bucket, and an
    `mlflow server` on both. `s3_env` is what a DVC or MLflow client needs."""

    BUCKET = "gptpipe"

    def __init__(self, request: pytest.FixtureRequest, root: Path):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            missing("psycopg2 (MLflow's PostgreSQL driver)",
                    "pip install -e '.[dev]' (psycopg2-binary)")
        self.postgres = PostgresCluster()
        request.addfinalizer(self.postgres.cleanup)
        self.postgres.start()
        self.s3 = S3Server(root / "s3")
        request.addfinalizer(self.s3.stop)
        self.s3.start()
        self.s3.create_bucket(self.BUCKET)
        self.s3_env = {**S3_KEYS, "AWS_ENDPOINT_URL": self.s3.url,
                       "MLFLOW_S3_ENDPOINT_URL": self.s3.url}
        self.mlflow = MlflowServer(root / "mlflow", backend_uri=self.postgres.url,
                                   artifacts_destination=f"s3://{self.BUCKET}/mlflow",
                                   extra_env=self.s3_env)
        request.addfinalizer(self.mlflow.stop)
        self.mlflow.start()
