"""Tokenizers: characters (the lecture's), a BPE trained here, or a pretrained one.

All three save to one JSON file (no pickle). BPE and pretrained tokenizers are
stored as their full rank table, so a trained model carries everything it
needs to decode, offline, years later.
"""
from __future__ import annotations

import base64
import codecs
import os
import unicodedata
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import UserError

# The pretrained encodings gptpipe can build from a local .tiktoken file when
# tiktoken cannot download them: (pattern, special tokens). gpt2 shares
# r50k_base's ranks but tiktoken ships it as two files, so offline use r50k_base.
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
               r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""", r"""\s+""",
])
OFFLINE_ENCODINGS = {
    "r50k_base": (_R50K_PAT, {"<|endoftext|>": 50256}),
    "p50k_base": (_R50K_PAT, {"<|endoftext|>": 50256}),
    "cl100k_base": (_CL100K_PAT, {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                  "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                  "<|endofprompt|>": 100276}),
    "o200k_base": (_O200K_PAT, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}


def smallest_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0..vocab_size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise UserError(f"tokenizer: vocabulary of {vocab_size} does not fit in uint32")


class CharTokenizer:
    """The lecture's: one token per distinct character, in sorted order."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codes)
        ids = np.minimum(ids, len(self.chars) - 1)
        bad = self._codepoints[ids] != codes
        if bad.any():
            raise UserError(f"{what}: characters not in the tokenizer's vocabulary: "
                            f"{describe_counts(self.unknown_counts(text))}")
        return ids.astype(np.int64)

    def unknown_counts(self, text: str) -> dict[str, int]:
        """Each character of `text` the vocabulary lacks, with how often it occurs."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.minimum(np.searchsorted(self._codepoints, codes), len(self.chars) - 1)
        values, counts = np.unique(codes[self._codepoints[ids] != codes], return_counts=True)
        return {chr(v): int(n) for v, n in sorted(zip(values.tolist(), counts.tolist()),
                                                  key=lambda vc: (-vc[1], vc[0]))}

    def map_unknown(self, text: str, mode: str) -> tuple[str, dict[str, int]]:
        """`text` with the characters the vocabulary lacks dropped or replaced
        (an accented letter by its base letter when that is known, else a space)."""
        unknown = self.unknown_counts(text)
        if not unknown or mode == "error":
            return text, unknown
        table = {}
        for char in unknown:
            if mode == "drop":
                table[ord(char)] = None
            else:
                base = unicodedata.normalize("NFKD", char)[:1]
                table[ord(char)] = base if base in self._index else (
                    " " if " " in self._index else None)
        return text.translate(table), unknown

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def stream_decoder(self):
        return lambda ids: self.decode(ids)

    def to_json(self) -> dict:
        return {"kind": "char", "vocab_size": self.vocab_size, "chars": self.chars}


class RankTokenizer:
    """Byte-level BPE run by tiktoken from a rank table (trained here or pretrained)."""

    def __init__(self, kind: str, name: str, pattern: str, ranks: list[bytes],
                 special_tokens: dict[str, int]):
        import tiktoken

        self.kind, self.name, self.pattern = kind, name, pattern
        self.ranks, self.special_tokens = ranks, dict(special_tokens)
        self.encoding = tiktoken.Encoding(
            name=f"gptpipe-{name}", pat_str=pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(ranks)},
            special_tokens=self.special_tokens)
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        # Special-token text in a corpus is ordinary text: never an error, never special.
        ids = self.encoding.encode_ordinary(text)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def stream_decoder(self):
        """Decode a growing token stream without splitting multi-byte characters."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(self.encoding.decode_bytes(list(ids)))

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "vocab_size": self.vocab_size,
                "pattern": self.pattern, "special_tokens": self.special_tokens,
                "ranks": [base64.b64encode(token).decode("ascii") for token in self.ranks]}


def describe_counts(counts: dict[str, int], limit: int = 12) -> str:
    shown = ", ".join(f"{c!r} x{n}" for c, n in list(counts.items())[:limit])
    more = len(counts) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def train_bpe(train_text: str, vocab_size: int) -> RankTokenizer:
    """Train byte-level BPE with rustbpe on the training text only."""
    import rustbpe

    trainer = rustbpe.Tokenizer()
    # Lines (with their newline) are the unit of pre-tokenisation either way;
    # feeding them as an iterator lets rustbpe batch and parallelise.
    trainer.train_from_iterator(iter(train_text.splitlines(keepends=True)),
                                vocab_size=vocab_size)
    ranks_by_id = sorted(((rank, bytes(token)) for token, rank in
                          trainer.get_mergeable_ranks()))
    ranks = [token for _, token in ranks_by_id]
    if [rank for rank, _ in ranks_by_id] != list(range(len(ranks))):
        raise AssertionError("rustbpe returned non-contiguous ranks")
    return RankTokenizer("bpe", f"bpe{vocab_size}", trainer.get_pattern(), ranks, {})


def pretrained(encoding: str, encoding_file: str = "") -> RankTokenizer:
    """A pretrained tiktoken encoding: from a local file, or tiktoken's download/cache."""
    import tiktoken

    if encoding_file:
        return _from_local_file(encoding, Path(encoding_file))
    try:
        enc = tiktoken.get_encoding(encoding)
    except ValueError as exc:
        if "Unknown encoding" in str(exc):
            raise UserError(f"tokenizer.encoding: unknown encoding '{encoding}' "
                            f"(known: {', '.join(tiktoken.list_encoding_names())})") from None
        raise
    except Exception as exc:  # noqa: BLE001 - requests/urllib errors when offline
        raise UserError(
            f"tokenizer.encoding: '{encoding}' is not in tiktoken's cache and cannot be "
            f"downloaded ({type(exc).__name__}); set tokenizer.encoding_file to a local "
            f"'{encoding}.tiktoken' file (or TIKTOKEN_CACHE_DIR to a seeded cache)") from None
    mergeable = enc._mergeable_ranks  # the public constructor input, kept by tiktoken
    ranks = [token for token, _ in sorted(mergeable.items(), key=lambda kv: kv[1])]
    return RankTokenizer("tiktoken", encoding, enc._pat_str, ranks, enc._special_tokens)


def _from_local_file(encoding: str, path: Path) -> RankTokenizer:
    from tiktoken.load import load_tiktoken_bpe

    if encoding not in OFFLINE_ENCODINGS:
        hint = " (gpt2's ranks are r50k_base's)" if encoding == "gpt2" else ""
        raise UserError(f"tokenizer.encoding: '{encoding}' cannot be built from a local file; "
                        f"use one of {', '.join(OFFLINE_ENCODINGS)}{hint}")
    if not path.is_file():
        raise UserError(f"tokenizer.encoding_file: {path}: no such file")
    try:
        # An empty cache dir makes tiktoken read the path directly, never the network.
        old = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        mergeable = load_tiktoken_bpe(str(path))
    except Exception as exc:  # noqa: BLE001 - a malformed file surfaces as many types
        raise UserError(f"tokenizer.encoding_file: {path}: not a .tiktoken rank file "
                        f"({type(exc).__name__})") from None
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    pattern, specials = OFFLINE_ENCODINGS[encoding]
    ranks = [token for token, _ in sorted(mergeable.items(), key=lambda kv: kv[1])]
    return RankTokenizer("tiktoken", encoding, pattern, ranks, specials)


def from_json(data: dict, source: str = "tokenizer") -> CharTokenizer | RankTokenizer:
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind in ("bpe", "tiktoken"):
        ranks = [base64.b64decode(token) for token in data["ranks"]]
        return RankTokenizer(kind, data["name"], data["pattern"], ranks,
                             data.get("special_tokens", {}))
    raise UserError(f"{source}: unknown tokenizer kind {kind!r}")


def load(path: str | Path) -> CharTokenizer | RankTokenizer:
    from .files import read_json

    return from_json(read_json(path), str(path))
