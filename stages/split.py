"""split: the first split.train_fraction of the tokens to train, the rest to val."""
from pathlib import Path

from gptpipe import params, tokenizers
from gptpipe.arrays import load_tokens, save_tokens
from gptpipe.errors import run_main
from gptpipe.files import read_json, write_json
from gptpipe.splitting import split_tokens, val_in_train

TOKENS = Path("data/tokens/tokens.npy")
TOKENIZER = Path("data/tokens/tokenizer.json")
TRAIN = Path("data/split/train.npy")
VAL = Path("data/split/val.npy")
REPORT = Path("reports/split.json")


def main() -> None:
    p = params.load()
    ids = load_tokens(TOKENS)
    vocab_size = read_json(TOKENIZER)["vocab_size"]
    train, val = split_tokens(ids, p.split.train_fraction, p.model.block_size)
    save_tokens(TRAIN, train, vocab_size)
    save_tokens(VAL, val, vocab_size)
    overlap = val_in_train(train, val)
    write_json(REPORT, {"train_tokens": int(len(train)), "val_tokens": int(len(val)),
                        "train_fraction": p.split.train_fraction,
                        "dtype": str(tokenizers.smallest_dtype(vocab_size)),
                        "val_in_train": overlap})
    print(f"split: {len(train):,} train / {len(val):,} val tokens -> {TRAIN}, {VAL}; "
          f"{overlap['share']:.1%} of val's {overlap['chunk_tokens']}-token chunks also "
          "occur in train")
    if overlap["share"] > p.split.max_val_overlap:
        print(f"split: warning: {overlap['share']:.1%} of val occurs verbatim in train "
              f"(over split.max_val_overlap={p.split.max_val_overlap:g}): the val loss will "
              "look better than it is; look for repeated text in the corpus "
              "(reports/download.json lists duplicate files)", flush=True)


if __name__ == "__main__":
    run_main(main, "split")
