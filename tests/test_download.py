"""The download stage, run as DVC runs it: `python stages/download.py` in a project.

URLs are served by a real HTTP server on 127.0.0.1 started by the tests; local
sources are real files, directories and symlinks. A failure must exit non-zero
with one line on stderr naming the source and the problem, and leave data/raw/
and reports/download.json exactly as they were.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from helpers import build_text_folder, env_for, make_project, run, tiny_text
from projects import write_params
from gptpipe.sources import embedded_plays_dir

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 40).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a loopback HTTP server ---------------------------------------------------------

def ok(body: bytes, **headers: str):
    def send(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            h.send_header(key.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(body)
    return send


def status(code: int):
    def send(h):
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return send


def without_length(body: bytes):
    """HTTP/1.0 style: no Content-Length, the body ends when the connection closes."""
    def send(h):
        h.send_response(200)
        h.end_headers()
        h.wfile.write(body)
    return send


def start_body(h, claimed: int, head: bytes) -> None:
    """A 200 that claims `claimed` bytes and sends `head` of them."""
    h.send_response(200)
    h.send_header("Content-Length", str(claimed))
    h.end_headers()
    h.wfile.write(head)


def truncated(body: bytes, claimed: int):
    def send(h):
        start_body(h, claimed, body)
        h.wfile.flush()
        h.close_connection = True
    return send


class Loopback:
    """A threaded HTTP server on 127.0.0.1; each path plays a list of responses."""

    def __init__(self) -> None:
        self.routes: dict[str, list] = {}
        self.hits: Counter = Counter()
        self.auth: list[str | None] = []
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                server.hits[path] += 1
                server.auth.append(self.headers.get("Authorization"))
                responses = server.routes.get(path, [status(404)])
                responses[min(server.hits[path], len(responses)) - 1](self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, *responses) -> str:
        self.routes[path] = list(responses)
        self.hits[path] = 0
        return f"http://127.0.0.1:{self.port}{path}"

    def stalled(self, head: bytes, claimed: int):
        """Send the headers and a little of the body, then go silent."""
        def send(h):
            start_body(h, claimed, head)
            h.wfile.flush()
            self.stop.wait(20)
        return send

    def silent(self):
        """Read the request, answer nothing for 20 s."""
        def send(h):
            self.stop.wait(20)
        return send

    def trickled(self, body: bytes, pieces: int, pause_s: float):
        """The body in `pieces` parts with a pause before each."""
        def send(h):
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):
                time.sleep(pause_s)
                h.wfile.write(body[start:start + step])
                h.wfile.flush()
        return send

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = Loopback()
    yield srv
    srv.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a project with an earlier, successful download ------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    proj = make_project(tmp_path_factory.mktemp("download") / "proj", corpus=tiny_text(4000))
    run(["python", "stages/download.py"], proj)
    assert (proj / "data/raw/corpus.txt").exists()
    return proj


def download(proj: Path, **data):
    write_params(proj, {"data": data})
    env = env_for(proj, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return run(["python", "stages/download.py"], proj, check=False, env=env, timeout=60)


def state(proj: Path) -> dict:
    """Everything under data/ and reports/, temp files included."""
    out = {}
    for folder in ("data", "reports"):
        for path in sorted((proj / folder).rglob("*")):
            out[path.relative_to(proj).as_posix()] = (
                path.read_bytes() if path.is_file() else "<dir>")
    return out


def report(proj: Path) -> dict:
    return json.loads((proj / "reports/download.json").read_text())


def raw_files(proj: Path) -> dict:
    raw = proj / "data/raw"
    return {p.relative_to(raw).as_posix(): p.read_bytes()
            for p in sorted(raw.rglob("*")) if p.is_file()}


def assert_fails(result, before: dict, proj: Path, *needles: str) -> str:
    """Non-zero exit, one line on stderr naming what is wrong, nothing written."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert "\r" not in result.stderr, "a progress bar leaked into the error output"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("download: error: "), line
    for needle in needles:
        assert needle in line, line
    assert state(proj) == before, "a failed download changed data/ or reports/"
    return line


# --- URLs ----------------------------------------------------------------------------

def test_url_success_writes_bytes_and_report(proj, server):
    url = server.serve("/tiny/input.txt", ok(TEXT))
    result = download(proj, source=url, sha256=sha256(TEXT).upper())
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "no progress bar when stderr is not a terminal"
    assert raw_files(proj) == {"input.txt": TEXT}
    rep = report(proj)
    assert rep["source"] == url
    assert rep["bytes"] == len(TEXT)
    assert rep["files"] == [{"path": "input.txt", "bytes": len(TEXT), "sha256": sha256(TEXT)}]
    # For one file the report's sha256 is the file's: the value to paste into data.sha256.
    assert rep["sha256"] == sha256(TEXT)
    # Outputs get ordinary permissions, not the 0600/0700 of temp files.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((proj / "data/raw").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((proj / "reports/download.json").stat().st_mode) == 0o666 & ~umask


def test_gzip_encoded_response_is_not_called_truncated(proj, server):
    # raw.githubusercontent.com answers gzip: Content-Length counts compressed bytes.
    packed = gzip.compress(TEXT)
    url = server.serve("/gz/input.txt", ok(packed, Content_Encoding="gzip"))
    result = download(proj, source=url, retries=0)
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"input.txt": TEXT}
    assert report(proj)["files"][0]["sha256"] == sha256(TEXT)


def test_http_404(proj, server):
    url = server.serve("/missing.txt", status(404))
    before = state(proj)
    line = assert_fails(download(proj, source=url, retries=3), before, proj, url, "404")
    assert server.hits["/missing.txt"] == 1, "a 404 is not retried"
    assert "Not Found" in line


def test_http_500_then_success_is_retried(proj, server):
    url = server.serve("/flaky.txt", status(500), ok(TEXT))
    result = download(proj, source=url, retries=2, timeout_s=5.0)
    assert result.returncode == 0, result.stderr
    assert server.hits["/flaky.txt"] == 2
    assert raw_files(proj) == {"flaky.txt": TEXT}


def test_http_500_every_time_gives_up_after_retries(proj, server):
    url = server.serve("/down.txt", status(500))
    before = state(proj)
    line = assert_fails(download(proj, source=url, retries=2, timeout_s=5.0), before, proj,
                        url, "500", "2 retries")
    assert server.hits["/down.txt"] == 3, "one try plus data.retries retries"
    assert "server error" in line


def test_sha256_mismatch(proj, server):
    url = server.serve("/mismatch.txt", ok(TEXT))
    before = state(proj)
    wrong = "0" * 64
    assert_fails(download(proj, source=url, sha256=wrong), before, proj,
                 url, "sha256 mismatch", wrong, sha256(TEXT))


def test_sha256_with_a_directory_source(proj, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(TEXT)
    (folder / "b.txt").write_bytes(TEXT + b"more\n")
    before = state(proj)
    assert_fails(download(proj, source=str(folder), sha256="0" * 64), before, proj,
                 "data.sha256", "2 files")


def test_truncated_body(proj, server):
    url = server.serve("/short.txt", truncated(TEXT[:100], claimed=len(TEXT)))
    before = state(proj)
    assert_fails(download(proj, source=url, retries=0), before, proj, url, "truncated")


def test_truncated_body_in_a_fresh_project_leaves_nothing(proj, server):
    shutil.rmtree(proj / "data")
    shutil.rmtree(proj / "reports")
    url = server.serve("/short2.txt", truncated(TEXT[:100], claimed=len(TEXT)))
    assert_fails(download(proj, source=url, retries=0), {}, proj, url, "truncated")
    assert not (proj / "data/raw").exists()
    assert not (proj / "reports/download.json").exists()


def test_stalled_server_times_out(proj, server):
    url = server.serve("/stall.txt", server.stalled(TEXT[:100], claimed=len(TEXT)))
    before = state(proj)
    # The server holds the connection open for 20 s: only the 1 s read timeout can end
    # the download with this message (past 20 s it would be a truncated body).
    assert_fails(download(proj, source=url, timeout_s=1.0, retries=1), before, proj,
                 url, "read timeout: no data for 1 s")
    assert server.hits["/stall.txt"] == 1, "a body stalled mid-way is not fetched again"


def test_silent_server_read_timeout_is_retried_then_succeeds(proj, server):
    # The first request gets no answer at all (the server holds it 20 s); the read
    # timeout ends it and the retry gets the file.
    url = server.serve("/silent-once.txt", server.silent(), ok(TEXT))
    result = download(proj, source=url, timeout_s=1.0, retries=2)
    assert result.returncode == 0, result.stderr
    assert server.hits["/silent-once.txt"] == 2, "the timed-out request was retried once"
    assert raw_files(proj) == {"silent-once.txt": TEXT}


def test_silent_server_every_time_gives_up_after_the_retries(proj, server):
    url = server.serve("/silent.txt", server.silent())
    before = state(proj)
    assert_fails(download(proj, source=url, timeout_s=1.0, retries=1), before, proj,
                 url, "read timeout: no data for 1 s")
    assert server.hits["/silent.txt"] == 2, "one try plus data.retries retries"


def test_progress_bar_on_a_terminal(proj, server):
    # A body sent in 8 pieces over ~2 s, to a stage whose stderr is a terminal (a pty
    # 100 columns wide: tqdm draws nothing on a 0-column one).
    import fcntl
    import pty
    import struct
    import termios

    body = TEXT * 100  # ~270 kB: several of the stage's 64 kB read chunks
    url = server.serve("/slow.txt", server.trickled(body, pieces=8, pause_s=0.25))
    write_params(proj, {"data": {"source": url, "retries": 0, "timeout_s": 10.0}})
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = env_for(proj, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.Popen(["python", "stages/download.py"], cwd=proj, env=env,
                            stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the stage closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0, shown
    assert raw_files(proj) == {"slow.txt": body}
    frames = shown.decode(errors="replace").split("\r")
    # tqdm's bar: "download:  37%|###7      | 1.05k/2.83k [...]", redrawn as bytes arrive
    percents = {int(m.group(1)) for frame in frames
                if (m := re.search(r"download:\s+(\d+)%\|", frame))}
    assert len(percents) >= 2 and min(percents) < 100, shown


@pytest.mark.parametrize("response", ["declared", "streamed"])
def test_over_the_size_cap(proj, server, response):
    big = b"to be or not to be\n" * 500
    send = ok(big) if response == "declared" else without_length(big)
    url = server.serve(f"/big-{response}.txt", send)
    before = state(proj)
    assert_fails(download(proj, source=url, max_bytes=1000, retries=0), before, proj,
                 url, "data.max_bytes=1000")


def test_local_file_over_the_size_cap(proj, tmp_path):
    src = tmp_path / "big.txt"
    src.write_bytes(TEXT)
    before = state(proj)
    assert_fails(download(proj, source=str(src), max_bytes=100), before, proj,
                 str(src), "data.max_bytes=100")


def test_connection_refused(proj):
    url = f"http://127.0.0.1:{closed_port()}/input.txt"
    before = state(proj)
    assert_fails(download(proj, source=url, retries=1, timeout_s=2.0), before, proj,
                 url, "cannot connect", "Connection refused")


def test_unsupported_scheme(proj):
    before = state(proj)
    line = assert_fails(download(proj, source="ftp://anon:ftppass@127.0.0.1/input.txt"),
                        before, proj, "data.source", "unsupported scheme 'ftp://'",
                        "ftp://***@127.0.0.1/input.txt")
    assert "ftppass" not in line


def requires_auth(body: bytes, user: str, password: str = "", token: str = ""):
    """A route that answers 401 unless the request carries these credentials."""
    wanted = (f"Bearer {token}" if token else
              "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())

    def send(h):
        if h.headers.get("Authorization") != wanted:
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Basic realm="corpus"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        ok(body)(h)
    return send


SECRET = "s3cretPa55-7f1c"


@pytest.mark.parametrize("source", [
    "http://alice:{secret}@127.0.0.1:{port}/private/input.txt",
    "https://alice:{secret}@example.org/input.txt",
    "http://{secret}@127.0.0.1:{port}/private/input.txt",
    "http://127.0.0.1:{port}/private/input.txt?token={secret}",
    "https://example.org/input.txt?X-Amz-Signature={secret}&X-Amz-Expires=60",
    "file://alice:{secret}@localhost/etc/hosts",
])
def test_credentials_in_the_url_are_refused_saying_where_they_go(proj, server, source):
    url = source.format(secret=SECRET, port=server.port)
    server.serve("/private/input.txt", requires_auth(TEXT, "alice", SECRET))
    before = state(proj)
    hits = server.hits["/private/input.txt"]
    line = assert_fails(download(proj, source=url), before, proj, "data.source",
                        "holds credentials", "GPTPIPE_HTTP_USER", "GPTPIPE_HTTP_PASSWORD",
                        "GPTPIPE_HTTP_TOKEN", "~/.netrc")
    assert SECRET not in line
    assert server.hits["/private/input.txt"] == hits, "refused before any request"


def with_env(proj: Path, **extra: str) -> dict:
    env = env_for(proj, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    for key in ("GPTPIPE_HTTP_USER", "GPTPIPE_HTTP_PASSWORD", "GPTPIPE_HTTP_TOKEN", "NETRC"):
        env.pop(key, None)
    env.update(extra)
    return env


def download_with(proj: Path, env: dict, **data):
    write_params(proj, {"data": data})
    return run(["python", "stages/download.py"], proj, check=False, env=env, timeout=60)


def test_basic_auth_from_environment_variables(proj, server, tmp_path):
    url = server.serve("/env/input.txt", requires_auth(TEXT, "alice", SECRET))
    home = tmp_path / "home"  # no ~/.netrc there
    home.mkdir()
    before = state(proj)
    refused = download_with(proj, with_env(proj, HOME=str(home)), source=url, retries=0)
    assert_fails(refused, before, proj, url, "HTTP 401")
    result = download_with(proj, with_env(proj, HOME=str(home), GPTPIPE_HTTP_USER="alice",
                                          GPTPIPE_HTTP_PASSWORD=SECRET), source=url)
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"input.txt": TEXT}
    assert SECRET not in result.stdout + result.stderr + json.dumps(report(proj))
    # one variable without the other is a one-line error naming the missing one
    half = download_with(proj, with_env(proj, HOME=str(home), GPTPIPE_HTTP_USER="alice"),
                         source=url)
    assert half.returncode != 0 and half.stderr.startswith("download: error: ")
    assert "GPTPIPE_HTTP_PASSWORD is not set" in half.stderr


def test_bearer_token_from_the_environment(proj, server, tmp_path):
    url = server.serve("/token/input.txt", requires_auth(TEXT, "", token=SECRET))
    result = download_with(proj, with_env(proj, HOME=str(tmp_path), GPTPIPE_HTTP_TOKEN=SECRET),
                           source=url)
    assert result.returncode == 0, result.stderr
    assert server.auth[-1] == f"Bearer {SECRET}"
    assert raw_files(proj) == {"input.txt": TEXT}


def test_basic_auth_from_netrc(proj, server, tmp_path):
    url = server.serve("/netrc/input.txt", requires_auth(TEXT, "bob", SECRET))
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1\n  login bob\n  password {SECRET}\n")
    netrc.chmod(0o600)
    result = download_with(proj, with_env(proj, HOME=str(home)), source=url)
    assert result.returncode == 0, result.stderr
    assert server.auth[-1] == "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert raw_files(proj) == {"input.txt": TEXT}
    assert SECRET not in result.stdout + result.stderr
    basic = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert files_holding(proj, [SECRET, basic]) == []


def test_errors_never_show_credentials_of_other_schemes(proj):
    # An unsupported scheme is refused as such, with its user info hidden.
    before = state(proj)
    line = assert_fails(download(proj, source=f"ftp://anon:{SECRET}@127.0.0.1/input.txt"),
                        before, proj, "unsupported scheme", "ftp://***@127.0.0.1/input.txt")
    assert SECRET not in line


# --- local files and folders ---------------------------------------------------------

def test_missing_local_file(proj, tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    before = state(proj)
    assert_fails(download(proj, source=str(missing)), before, proj,
                 str(missing), "no such file")


def test_file_url(proj, tmp_path):
    src = tmp_path / "my corpus.txt"  # a space: the URL carries it as %20
    src.write_bytes(TEXT)
    url = src.as_uri()
    assert "%20" in url
    result = download(proj, source=url)
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"my corpus.txt": TEXT}
    assert report(proj)["source"] == url


def test_empty_directory(proj, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    before = state(proj)
    assert_fails(download(proj, source=str(folder)), before, proj, str(folder), "no files")


def test_directory_of_binary_files(proj, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "b.bin").write_bytes(bytes(range(256)))
    before = state(proj)
    assert_fails(download(proj, source=str(folder)), before, proj,
                 str(folder), "only non-text files")


def test_binary_file_among_text_is_skipped_and_reported(proj, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "act2").mkdir(parents=True)
    (folder / "act1.txt").write_bytes(TEXT)
    (folder / "act2" / "scene1.txt").write_bytes(b"ROMEO:\nBut soft!\n")
    (folder / "cover.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    result = download(proj, source=str(folder))
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"act1.txt": TEXT, "act2/scene1.txt": b"ROMEO:\nBut soft!\n"}
    rep = report(proj)
    assert rep["skipped"] == [{"path": "cover.png", "reason": "binary (NUL bytes)"}]
    assert [f["path"] for f in rep["files"]] == ["act1.txt", "act2/scene1.txt"]
    assert rep["bytes"] == len(TEXT) + len(b"ROMEO:\nBut soft!\n")
    assert "1 skipped" in result.stdout


def test_symlink_out_of_the_directory_is_not_followed(proj, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"PRIVATE KEY MATERIAL\n")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "play.txt").write_bytes(TEXT)
    (folder / "escape.txt").symlink_to(outside / "secret.txt")
    (folder / "escape-dir").symlink_to(outside, target_is_directory=True)
    result = download(proj, source=str(folder))
    assert result.returncode == 0, result.stderr
    files = raw_files(proj)
    assert files == {"play.txt": TEXT}
    assert not any(b"PRIVATE" in data for data in files.values())
    skipped = {s["path"]: s["reason"] for s in report(proj)["skipped"]}
    assert set(skipped) == {"escape.txt", "escape-dir"}
    assert all("symlink" in reason for reason in skipped.values())


def test_a_folder_gives_each_text_once(proj, tmp_path):
    folder = tmp_path / "texts"
    texts = build_text_folder(folder)
    result = download(proj, source=str(folder))
    assert result.returncode == 0, result.stderr
    files = raw_files(proj)
    # UTF-16 with a BOM is text; each distinct file once, links and copies not at all
    assert set(files) == set(texts)
    assert files["utf16le.txt"] == (folder / "utf16le.txt").read_bytes()
    rep = report(proj)
    assert rep["aliases"] == [{"path": "english.txt.u8", "target": "english.txt"},
                              {"path": "mirror", "target": "sub"},
                              {"path": "sub/up.txt", "target": "koi8.txt"}]
    # the first in sorted path order is kept
    assert rep["duplicates"] == [{"path": "sub/english-again.txt", "same_as": "english.txt"},
                                 {"path": "z-copy.txt", "same_as": "english.txt"}]
    assert {s["path"]: s["reason"] for s in rep["skipped"]} == {
        "blank.txt": "empty or whitespace only", "empty.txt": "empty or whitespace only",
        "logo.png": "binary (NUL bytes)"}
    assert "3 aliases, 2 duplicates, 3 skipped" in result.stdout


def test_one_file_is_one_file(proj, tmp_path):
    src = tmp_path / "one.txt"
    src.write_bytes(TEXT)
    result = download(proj, source=str(src))
    assert result.returncode == 0, result.stderr
    assert f"download: 1 file, {len(TEXT):,} bytes" in result.stdout
    assert "1 files" not in result.stdout


@pytest.mark.parametrize("bom, codec", [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"),
                                        (b"\xff\xfe\x00\x00", "utf-32-le")])
def test_a_utf16_or_utf32_file_with_a_bom_is_text(proj, tmp_path, bom, codec):
    src = tmp_path / "windows.txt"
    data = bom + TEXT.decode().encode(codec)
    src.write_bytes(data)
    result = download(proj, source=str(src))
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"windows.txt": data}


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n", b"\xff\xfe" + " \n".encode("utf-16-le")],
                         ids=["empty", "whitespace", "utf16-whitespace"])
def test_an_empty_source_file_fails_in_download_naming_it(proj, tmp_path, content):
    src = tmp_path / "empty.txt"
    src.write_bytes(content)
    before = state(proj)
    assert_fails(download(proj, source=str(src)), before, proj, str(src),
                 "empty or whitespace only")


def test_an_empty_url_body_fails_in_download(proj, server):
    url = server.serve("/empty.txt", ok(b"\n\n"))
    before = state(proj)
    assert_fails(download(proj, source=url), before, proj, url, "empty or whitespace only")


def test_a_folder_of_empty_files_fails_naming_it(proj, tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"")
    (folder / "b.txt").write_bytes(b"\n \n")
    before = state(proj)
    assert_fails(download(proj, source=str(folder)), before, proj, str(folder),
                 "only empty files")


def test_a_file_url_with_a_remote_host_is_refused(proj, tmp_path):
    src = tmp_path / "local.txt"
    src.write_bytes(TEXT)
    before = state(proj)
    url = "file://fileserver" + src.as_posix()
    assert_fails(download(proj, source=url), before, proj, url, "fileserver",
                 "not empty or localhost")
    result = download(proj, source="file://localhost" + src.as_posix())
    assert result.returncode == 0, result.stderr
    assert raw_files(proj) == {"local.txt": TEXT}


# --- the embedded plays ----------------------------------------------------------------

def test_embedded_shakespeare_is_copied_byte_for_byte(proj):
    result = download(proj, source="shakespeare")
    assert result.returncode == 0, result.stderr
    plays = embedded_plays_dir()
    expected = {p.relative_to(plays).as_posix(): sha256(p.read_bytes())
                for p in plays.rglob("*.md")}
    assert len(expected) == 38
    got = {name: sha256(data) for name, data in raw_files(proj).items()}
    assert got == expected
    rep = report(proj)
    assert rep["source"] == "shakespeare"
    assert rep["bytes"] == sum(p.stat().st_size for p in plays.rglob("*.md"))
    assert {f["path"]: f["sha256"] for f in rep["files"]} == expected
    assert len(rep["sha256"]) == 64


# --- a secret given the supported way, through the whole pipeline ---------------------

def files_holding(folder: Path, needles: list[str]) -> list[str]:
    """Every file under `folder` (dvc.lock, params.yaml, reports/, data/, mlflow.db,
    mlartifacts/, .dvc/, .git/, ...) that holds one of `needles`."""
    return [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.is_symlink()
            and any(n.encode() in path.read_bytes() for n in needles)]


@pytest.mark.slow
def test_a_secret_given_the_supported_way_lands_nowhere(tmp_path, server):
    """Credentials from the environment (which every stage inherits, train and its
    MLflow client too) reach the server and nothing else: not dvc.lock, params,
    reports, data, models, MLflow (params, tags, metrics of a real sqlite store,
    artifacts), DVC's or git's files, nor any stage's output. (~/.netrc: see
    test_basic_auth_from_netrc.)"""
    from mlflow.tracking import MlflowClient

    body = tiny_text(20_000).encode()
    url = server.serve("/secret/input.txt", requires_auth(body, "carol", SECRET))
    proj = make_project(tmp_path / "proj", overrides={"data": {"source": url}})
    home = tmp_path / "home"  # HOME is the test's: ~/.netrc is this one
    home.mkdir()
    extra = {"HOME": str(home), "GPTPIPE_HTTP_USER": "carol", "GPTPIPE_HTTP_PASSWORD": SECRET}
    result = run(["dvc", "repro"], proj, env=with_env(proj, **extra), timeout=900)
    basic = base64.b64encode(f"carol:{SECRET}".encode()).decode()
    assert server.auth[-1] == f"Basic {basic}", "the credentials were used"
    assert (proj / "data/raw/input.txt").read_bytes() == body

    needles = [SECRET, basic, SECRET.encode().hex()]
    logs = result.stdout + result.stderr
    assert not [n for n in needles if n in logs], "a secret in a stage's output"
    assert files_holding(proj, needles) == []
    assert files_holding(proj, ["carol"]) == []  # the user name is no one's business either
    assert files_holding(proj, [url]), "the scan reads the files that hold data.source"
    for name in ("dvc.lock", "mlflow.db", "reports/download.json"):
        assert (proj / name).is_file(), name

    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1
    record = runs[0].data
    assert record.params["data.source"] == url  # the URL is logged, without credentials
    assert "data.val_in_train" in record.metrics
    everything = json.dumps([record.params, record.tags, sorted(record.metrics)])
    assert not [n for n in needles if n in everything]
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert artifacts, "artifacts were logged (and scanned above, under mlartifacts/)"
