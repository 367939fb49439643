"""tokenize: build the tokenizer and encode the corpus to one token array."""
from pathlib import Path

from gptpipe import params, tokenizers
from gptpipe.arrays import save_tokens, split_point
from gptpipe.errors import UserError, run_main
from gptpipe.files import write_bytes, write_json
from gptpipe.init_source import PLACEHOLDER
from gptpipe.init_source import TOKENIZER as INIT_TOKENIZER

CORPUS = Path("data/clean/corpus.txt")
TOKENS = Path("data/tokens/tokens.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
REPORT = Path("reports/tokenize.json")


def main() -> None:
    all_params = params.load()
    p = all_params.tokenizer
    try:
        text = CORPUS.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{CORPUS}: not found (run the clean stage first)") from None
    unknown: dict[str, int] = {}
    if p.kind == "from_model":
        # The init_from model's tokenizer, byte for byte (train checks the sha256).
        tokenizer_bytes = INIT_TOKENIZER.read_bytes() if INIT_TOKENIZER.is_file() else b""
        if tokenizer_bytes in (b"", PLACEHOLDER):
            raise UserError(f"{INIT_TOKENIZER}: no start model's tokenizer; tokenizer.kind from_model "
                            "needs train.init_from's model (run `dvc repro`)")
        tokenizer = tokenizers.load(INIT_TOKENIZER)
        if tokenizer.kind == "char":
            text, unknown = tokenizer.map_unknown(text, p.unknown_chars)
            if unknown and p.unknown_chars == "error":
                raise UserError(
                    f"{CORPUS}: {sum(unknown.values()):,} characters the init_from model's "
                    f"tokenizer lacks: {tokenizers.describe_counts(unknown)} (set "
                    "tokenizer.unknown_chars: drop or replace, or pick another init_from)")
            if unknown:
                print(f"tokenize: {p.unknown_chars} {sum(unknown.values()):,} unknown "
                      f"characters: {tokenizers.describe_counts(unknown)}", flush=True)
    elif p.kind == "char":
        tokenizer = tokenizers.CharTokenizer.train(text)
    elif p.kind == "bpe":
        # Only the training portion shapes the vocabulary: val text stays unseen.
        train_text = text[:split_point(len(text), all_params.split.train_fraction)]
        print(f"tokenize: training BPE to {p.vocab_size} tokens on "
              f"{len(train_text):,} characters", flush=True)
        tokenizer = tokenizers.train_bpe(train_text, p.vocab_size)
    else:
        tokenizer = tokenizers.pretrained(p.encoding, p.encoding_file)
    ids = tokenizer.encode(text, str(CORPUS))
    if tokenizer.decode(ids) != text:
        raise UserError(f"{CORPUS}: the {p.kind} tokenizer does not round-trip this text")
    save_tokens(TOKENS, ids, tokenizer.vocab_size)
    if p.kind == "from_model":
        write_bytes(TOKENIZER, tokenizer_bytes)
    else:
        write_json(TOKENIZER, tokenizer.to_json())
    write_json(REPORT, {
        "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "tokens": int(len(ids)),
        "characters": len(text), "chars_per_token": round(len(text) / max(len(ids), 1), 4),
        "dtype": str(tokenizers.smallest_dtype(tokenizer.vocab_size)),
        **({"unknown_chars": {"mode": p.unknown_chars, "counts": unknown}} if unknown else {}),
    })
    kind = f"{tokenizer.kind} (from_model)" if p.kind == "from_model" else p.kind
    print(f"tokenize: {kind}, vocab {tokenizer.vocab_size}, {len(ids):,} tokens "
          f"({len(text) / max(len(ids), 1):.2f} characters/token) -> {TOKENS}")


if __name__ == "__main__":
    run_main(main, "tokenize")
