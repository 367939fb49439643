"""Pretrain, then fine-tune (train.init_from): the init stage's bytes under
models/init/, the tokenizer following the weights, refusing bad sources and
contradicting params with one line, and (slow) a real pretrain -> fine-tune with
DVC and MLflow: the weights really are loaded, reruns follow the bytes, the
lineage chain goes back to the scratch run. Real torch, DVC, MLflow; tiny models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import (dvc_status, env_for, make_project, one_error_line, run, run_id_of, stages_run,
    tiny_text)
from projects import write_params
from gptpipe import checkpoints
from gptpipe.files import sha256_file, write_json
from gptpipe.init_source import PLACEHOLDER
from gptpipe.model import ModelConfig, build
from gptpipe.tokenizers import CharTokenizer

INIT_OUTS = ("models/init/model.pt", "models/init/tokenizer.json", "models/init/source.json")
TEXT = "the quick brown fox jumps over the lazy dog.\nTHE END.\n" * 200


def save_source(folder: Path, text: str = TEXT, legacy: bool = False, without: tuple = (),
                **config) -> Path:
    """A tiny untrained gptpipe model file with its tokenizer beside it (and inside
    it; legacy: a gptpipe 0.1.x file, which only names it by path and sha256;
    without: model keys a file written before they existed lacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CharTokenizer.train(text)
    write_json(folder / "tokenizer.json", tokenizer.to_json())
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": tokenizer.vocab_size, "block_size": 32, "n_layer": 1,
                         "n_head": 2, "n_embd": 32, **config})
    payload = checkpoints.model_payload(cfg.as_dict(), build(cfg).state_dict(),
                                        folder / "tokenizer.json", step=0)
    payload["tokenizer"]["path"] = "data/tokens/tokenizer.json"
    for key in without:
        del payload["model_config"][key]
    if legacy:
        payload["format"] = "gptpipe.model/1"
        del payload["tokenizer"]["json"]
    checkpoints.save(folder / "model.pt", payload)
    return folder / "model.pt"


def stage(proj: Path, script: str):
    return run(["python", f"stages/{script}"], proj, check=False, timeout=300)


def init(proj: Path, init_from: str):
    write_params(proj, {"train": {"init_from": init_from}})
    return stage(proj, "init_model.py")


# -- the init stage --------------------------------------------------------------------

def test_scratch_writes_placeholders_and_the_same_bytes_every_time(proj):
    assert init(proj, "scratch").returncode == 0
    assert json.loads((proj / "models/init/source.json").read_text()) == {
        "init_from": "scratch"}
    assert (proj / "models/init/model.pt").read_bytes() == PLACEHOLDER
    first = {out: (proj / out).read_bytes() for out in INIT_OUTS}
    assert init(proj, "scratch").returncode == 0
    assert {out: (proj / out).read_bytes() for out in INIT_OUTS} == first


def test_a_model_file_is_copied_with_its_tokenizer_and_resolution(proj, tmp_path):
    source = save_source(tmp_path / "pretrained")
    result = init(proj, str(source))
    assert result.returncode == 0, result.stderr
    assert (proj / "models/init/model.pt").read_bytes() == source.read_bytes()
    assert (proj / "models/init/tokenizer.json").read_bytes() == \
        (source.parent / "tokenizer.json").read_bytes()
    resolved = json.loads((proj / "models/init/source.json").read_text())
    assert resolved["init_from"] == str(source)
    assert resolved["model_sha256"] == sha256_file(source)
    assert resolved["model_config"]["n_embd"] == 32
    # A gptpipe 0.1.x model file (the tokenizer only named) in a project's layout:
    # models/model.pt + data/tokens/tokenizer.json.
    legacy = save_source(tmp_path / "legacy", legacy=True)
    project_like = tmp_path / "other"
    (project_like / "models").mkdir(parents=True)
    (project_like / "data/tokens").mkdir(parents=True)
    shutil.copy(legacy, project_like / "models/model.pt")
    shutil.copy(legacy.parent / "tokenizer.json", project_like / "data/tokens/tokenizer.json")
    assert init(proj, str(project_like / "models/model.pt")).returncode == 0
    assert (proj / "models/init/model.pt").read_bytes() == legacy.read_bytes()
    assert checkpoints.load_model_file(legacy)["format"] == "gptpipe.model/1"


def test_a_lone_model_file_carries_its_tokenizer(proj, tmp_path):
    """A model file copied alone: init and `gptpipe sample --model` use the tokenizer
    inside it; a tokenizer.json beside it that disagrees is one line naming both."""
    source = save_source(tmp_path / "pretrained")
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(source, lone)
    assert init(proj, str(lone)).returncode == 0
    assert (proj / "models/init/tokenizer.json").read_bytes() == \
        (source.parent / "tokenizer.json").read_bytes()
    sample = ["gptpipe", "sample", "--model", str(lone), "--prompt", "the ",
              "--max-new-tokens", "5"]
    result = run(sample, proj, check=False, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("the "), result.stderr

    write_json(lone.parent / "tokenizer.json", CharTokenizer.train("other text").to_json())
    for result, prog in ((init(proj, str(lone)), "init"),
                         (run(sample, proj, check=False, timeout=120), "gptpipe")):
        one_error_line(result, prog, f"{lone.parent / 'tokenizer.json'}: disagrees with the "
                       f"tokenizer inside {lone}")
    # the same tokenizer beside it is fine
    shutil.copy(source.parent / "tokenizer.json", lone.parent / "tokenizer.json")
    assert init(proj, str(lone)).returncode == 0


def test_a_gptpipe_01_model_file_still_loads_for_sampling(tmp_path):
    from gptpipe.inference import load_model

    legacy = save_source(tmp_path / "legacy", legacy=True)
    model, tokenizer = load_model(legacy)  # its tokenizer.json beside it, by sha256
    assert tokenizer.decode(tokenizer.encode("the fox").tolist()) == "the fox"
    (legacy.parent / "tokenizer.json").unlink()
    with pytest.raises(Exception, match=r"gptpipe 0\.1\.x model file"):
        load_model(legacy)


def test_bad_sources_fail_with_one_line_and_write_nothing(proj, tmp_path):
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("hello")
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoints.save(checkpoint, {"format": checkpoints.CHECKPOINT_FORMAT, "trainer": {}})
    lonely = save_source(tmp_path / "lonely", legacy=True)
    (tmp_path / "lonely/tokenizer.json").unlink()
    (proj / "models").mkdir()
    shutil.copy(save_source(tmp_path / "own"), proj / "models/model.pt")
    cases = [(str(tmp_path / "missing.pt"), "no such model file"),
             ("models/model.pt", "this pipeline's own train output"),
             (str(tmp_path), "a folder, not a model file"),
             (str(not_a_model), "refused"),
             (str(checkpoint),
              f"not a gptpipe model file (format '{checkpoints.CHECKPOINT_FORMAT}')"),
             (str(lonely), "its tokenizer (sha256")]
    for init_from, why in cases:
        line = one_error_line(init(proj, init_from), "init", f"train.init_from: {init_from}",
                              why)
        assert line.count("train.init_from") == 1
        assert not (proj / "models/init").exists(), init_from
    assert (proj / "models/model.pt").read_bytes() == (tmp_path / "own/model.pt").read_bytes()


def test_bad_uris_fail_with_one_line_and_write_nothing(proj):
    missing_run = "runs:/" + "0" * 32 + "/model"
    for uri, why in ((missing_run, "no run '" + "0" * 32 + "'"),
                     ("models:/gptpipe@champion", "no registered model 'gptpipe'"),
                     ("models:/gptpipe/3", "no registered model 'gptpipe'")):
        one_error_line(init(proj, uri), "init", f"train.init_from: {uri}: ", why)
        assert not (proj / "models/init").exists(), uri


# -- tokenize with the source model's tokenizer ----------------------------------------

def tokenize_from_model(proj: Path, corpus: str, unknown_chars: str = "error"):
    (proj / "data/clean").mkdir(parents=True, exist_ok=True)
    (proj / "data/clean/corpus.txt").write_text(corpus, encoding="utf-8")
    write_params(proj, {"tokenizer": {"kind": "from_model", "unknown_chars": unknown_chars}})
    return stage(proj, "tokenize_text.py")


def test_from_model_reuses_the_tokenizer_and_names_unknown_characters(proj, tmp_path):
    source = save_source(tmp_path / "pretrained")
    assert init(proj, str(source)).returncode == 0
    corpus = "the lazy fox, café! café!\n"  # ',', '!', 'é' are not in TEXT
    one_error_line(tokenize_from_model(proj, corpus), "tokenize", "data/clean/corpus.txt",
                   "5 characters the init_from model's tokenizer lacks",
                   "'!' x2, 'é' x2, ',' x1", "tokenizer.unknown_chars")
    assert not (proj / "data/tokens").exists()

    from gptpipe import tokenizers

    for mode, expected in (("drop", "the lazy fox caf caf\n"),
                           ("replace", "the lazy fox  cafe  cafe \n")):
        result = tokenize_from_model(proj, corpus, mode)
        assert result.returncode == 0, result.stderr
        assert (proj / "data/tokens/tokenizer.json").read_bytes() == \
            (source.parent / "tokenizer.json").read_bytes()
        tok = tokenizers.load(proj / "data/tokens/tokenizer.json")
        ids = json.loads((proj / "reports/tokenize.json").read_text())
        from gptpipe.arrays import load_tokens

        assert tok.decode(load_tokens(proj / "data/tokens/tokens.npy").tolist()) == expected
        assert ids["unknown_chars"] == {"mode": mode, "counts": {"!": 2, "é": 2, ",": 1}}


def test_from_model_needs_an_init_from(proj):
    write_params(proj, {"tokenizer": {"kind": "from_model"}})
    one_error_line(stage(proj, "tokenize_text.py"), "tokenize", "tokenizer.kind",
                   "train.init_from is scratch")


# -- train refuses what contradicts the source ----------------------------------------

def prepared(proj: Path, tmp_path: Path, corpus: str = TEXT, **overrides) -> Path:
    source = save_source(tmp_path / "pretrained")
    assert init(proj, str(source)).returncode == 0
    assert tokenize_from_model(proj, corpus).returncode == 0
    write_params(proj, {"model": {"block_size": 32}, **overrides})
    assert stage(proj, "split.py").returncode == 0
    return source


def test_train_refuses_model_params_that_contradict_the_source(proj, tmp_path):
    prepared(proj, tmp_path)
    write_params(proj, {"model": {"n_layer": 2}})
    one_error_line(stage(proj, "train.py"), "train", "model.n_layer: 2 contradicts the "
                   "init_from model's 1", "only model.dropout may differ")
    assert not (proj / "models/model.pt").exists()
    assert not (proj / "reports/mlflow_run.json").exists()


def test_a_model_file_older_than_a_model_key_was_built_with_its_default(proj, tmp_path):
    """A file without model.value_embeds had none: asking for them contradicts it."""
    source = save_source(tmp_path / "pretrained", without=("value_embeds",),
                         kind="modern", bias=False)
    assert init(proj, str(source)).returncode == 0
    assert tokenize_from_model(proj, TEXT).returncode == 0
    write_params(proj, {"model": {"block_size": 32, "kind": "modern", "bias": False,
                                  "value_embeds": True}})
    assert stage(proj, "split.py").returncode == 0
    one_error_line(stage(proj, "train.py"), "train", "model.value_embeds: True contradicts "
                   "the init_from model's False")
    assert not (proj / "models/model.pt").exists()


def test_train_refuses_another_vocabulary(proj, tmp_path):
    prepared(proj, tmp_path)
    write_params(proj, {"tokenizer": {"kind": "char"}})  # a vocabulary of its own
    (proj / "data/clean/corpus.txt").write_text(TEXT + "xyz!", encoding="utf-8")
    assert stage(proj, "tokenize_text.py").returncode == 0
    assert stage(proj, "split.py").returncode == 0
    one_error_line(stage(proj, "train.py"), "train", "data/tokens/tokenizer.json",
                   "not the tokenizer of", "set tokenizer.kind: from_model")
    assert not (proj / "models/model.pt").exists()


# -- end to end: pretrain, fine-tune by path, DVC and MLflow ---------------------------

def first_batch_loss(model_file: Path, project: Path, batch_size: int, seed: int) -> float:
    """The loss of `model_file`'s weights on the fine-tune's first training batch."""
    from gptpipe.arrays import load_tokens
    from gptpipe.batches import WindowSampler
    from gptpipe.training import loss_fn

    payload = checkpoints.load_model_file(model_file)
    model = build(ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    model.train()  # as in training (dropout is 0)
    sampler = WindowSampler(load_tokens(project / "data/split/train.npy"),
                            model.cfg.block_size, batch_size, seed)
    x, y = sampler.next(torch.device("cpu"))
    with torch.no_grad():
        return loss_fn(model(x), y).item()


@pytest.mark.slow
def test_finetune_from_a_path_starts_from_its_weights_and_links_the_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    pre = make_project(tmp_path / "pre", corpus=tiny_text(30_000),
                       overrides={"train": {"autocast": "off"}})
    assert ran_with(pre, env) == ["init", "download", "clean", "tokenize", "split", "train"]
    pre_run, pre_model = run_id_of(pre), pre / "models/model.pt"

    other_text = tiny_text(60_000)[30_000:]  # later scenes: not the pretraining text
    ft = make_project(tmp_path / "ft", corpus=other_text, overrides={
        "train": {"init_from": str(pre_model), "autocast": "off", "seed": 7},
        "tokenizer": {"kind": "from_model", "unknown_chars": "replace"}})
    assert ran_with(ft, env) == ["init", "download", "clean", "tokenize", "split", "train"]
    ft_run = run_id_of(ft)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    first = client.get_metric_history(ft_run, "batch_loss")
    first = [m for m in first if m.step == 1][0].value
    assert first == pytest.approx(first_batch_loss(pre_model, ft, 8, 7), abs=1e-5)
    tags = client.get_run(ft_run).data.tags
    assert tags["gptpipe.parent_run_id"] == pre_run
    assert tags["gptpipe.parent_model_sha256"] == sha256_file(pre_model)
    assert tags["gptpipe.init_from"] == str(pre_model)
    assert tags["mlflow.parentRunId"] == pre_run  # same experiment: shown nested

    # Nothing changed: nothing runs, and DVC says so.
    assert ran_with(ft, env) == []
    assert dvc_status(ft, env_for(ft, **env), args=("train",)) == {}
    out = run(["gptpipe", "lineage", ft_run], ft, env=env_for(ft, **env), timeout=120).stdout
    chain = out.split("trained from:\n", 1)[1].splitlines()
    assert chain[0].startswith(f"  run {ft_run} (") and f"fine-tuned from {pre_model}" in chain[0]
    assert chain[1].startswith(f"    run {pre_run} (") and chain[1].endswith(": scratch")

    # New bytes at the path (the pretraining went on): pinned, like `dvc import`, until
    # `gptpipe init --update`; a rerun of init that finds other bytes says so.
    write_params(pre, {"train": {"max_iters": 40}})
    assert ran_with(pre, env)[-1] == "train"
    assert ran_with(ft, env) == []
    without_dvc_cache(ft, "models/init/model.pt")
    stale = run(["dvc", "repro", "init"], ft, env=env_for(ft, **env), check=False)
    assert stale.returncode != 0, stale.stdout
    assert "pins model sha256" in stale.stderr and "gptpipe init --update" in stale.stderr
    update = run(["gptpipe", "init", "--update"], ft, env=env_for(ft, **env), timeout=300)
    assert "the start model changed" in update.stdout
    assert ran_with(ft, env) == ["train"]
    assert run_id_of(ft) != ft_run
    assert client.get_run(run_id_of(ft)).data.tags["gptpipe.parent_run_id"] == run_id_of(pre)


def without_dvc_cache(project: Path, *outs: str) -> None:
    """`outs` as a clone sees them without a DVC remote: missing, and not in the cache."""
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    md5 = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage["outs"]}
    for out in outs:
        (project / out).unlink()
        (project / ".dvc/cache/files/md5" / md5[out][:2] / md5[out][2:]).unlink()


def ran_with(project: Path, env: dict) -> list[str]:
    return stages_run(run(["dvc", "repro", "train"], project, env=env_for(project, **env),
                          timeout=600).stdout)


@pytest.mark.slow
def test_finetune_from_a_run_uri_and_a_registry_alias_follows_the_alias(tmp_path):
    """runs:/ and models:/ sources: the weights are loaded (first-step loss), the
    same alias target runs nothing, a moved alias reruns train, the registered
    version says what it was fine-tuned from."""
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    pre = make_project(tmp_path / "pre", corpus=tiny_text(30_000), overrides={
        "train": {"autocast": "off"}, "mlflow": {"log_model": True}})
    ran_with(pre, env)
    v1_run = run_id_of(pre)
    client.set_registered_model_alias("gptpipe", "champion", "1")

    ft = make_project(tmp_path / "ft", corpus=tiny_text(60_000)[30_000:], overrides={
        "train": {"init_from": "models:/gptpipe@champion", "autocast": "off", "seed": 7},
        "tokenizer": {"kind": "from_model", "unknown_chars": "replace"}})
    assert ran_with(ft, env) == ["init", "download", "clean", "tokenize", "split", "train"]
    source = json.loads((ft / "models/init/source.json").read_text())
    assert (source["run_id"], source["model_name"], source["version"]) == (v1_run, "gptpipe",
                                                                          "1")
    v1_model = tmp_path / "v1.pt"
    shutil.copy(pre / "models/model.pt", v1_model)
    ft_run = run_id_of(ft)
    first = [m.value for m in client.get_metric_history(ft_run, "batch_loss") if m.step == 1]
    assert first[0] == pytest.approx(first_batch_loss(v1_model, ft, 8, 7), abs=1e-5)
    tags = client.get_run(ft_run).data.tags
    assert tags["gptpipe.parent_run_id"] == v1_run
    assert tags["gptpipe.parent_model_version"] == "gptpipe/1"
    assert ran_with(ft, env) == []  # nothing changed: nothing reruns

    # A second pretraining registers version 2 and the alias moves to it: the pin holds
    # (a clone without the cached bytes gets version 1 again) until `init --update`.
    write_params(pre, {"train": {"max_iters": 40}})
    ran_with(pre, env)
    v2_run = run_id_of(pre)
    client.set_registered_model_alias("gptpipe", "champion", "2")
    assert ran_with(ft, env) == []
    assert dvc_status(ft, env_for(ft, **env), args=("train",)) == {}
    without_dvc_cache(ft, "models/init/model.pt", "models/init/tokenizer.json")
    assert ran_with(ft, env) == ["init"]  # the pinned version 1: the same bytes
    assert json.loads((ft / "models/init/source.json").read_text())["version"] == "1"
    run(["gptpipe", "init", "--update"], ft, env=env_for(ft, **env), timeout=300)
    assert json.loads((ft / "models/init/source.json").read_text())["version"] == "2"
    assert ran_with(ft, env) == ["train"]  # same tokenizer bytes: tokenize stays
    tags = client.get_run(run_id_of(ft)).data.tags
    assert (tags["gptpipe.parent_run_id"], tags["gptpipe.parent_model_version"]) == (
        v2_run, "gptpipe/2")

    # By run URI: the first pretraining's weights again; this fine-tune is logged and
    # registered, and its version says what it was fine-tuned from.
    write_params(ft, {"train": {"init_from": f"runs:/{v1_run}/model"},
                      "mlflow": {"log_model": True}})
    assert ran_with(ft, env) == ["init", "train"]
    by_run = run_id_of(ft)
    version = client.search_model_versions(f"run_id = '{by_run}'")[0]
    assert version.tags["gptpipe.parent_run_id"] == v1_run
    assert version.tags["gptpipe.init_from"] == f"runs:/{v1_run}/model"
    assert version.tags["gptpipe.parent_model_version"] == "gptpipe/1"
    first = [m.value for m in client.get_metric_history(by_run, "batch_loss") if m.step == 1]
    assert first[0] == pytest.approx(first_batch_loss(v1_model, ft, 8, 7), abs=1e-5)
    out = run(["gptpipe", "lineage", by_run], ft, env=env_for(ft, **env), timeout=120).stdout
    chain = out.split("trained from:\n", 1)[1].splitlines()
    assert f"fine-tuned from runs:/{v1_run}/model" in chain[0]
    assert chain[1].startswith(f"    run {v1_run} (") and chain[1].endswith(": scratch")


@pytest.mark.slow
def test_finetuning_from_the_champion_on_the_same_text_settles(tmp_path):
    """models:/gptpipe@champion on the corpus it was trained on: the fine-tune becomes
    champion, and then `dvc status` is clean and a second `dvc repro` runs nothing
    (the init stage's pin does not follow the alias it moved)."""
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    text = tiny_text(30_000)
    pre = make_project(tmp_path / "pre", corpus=text, overrides={
        "train": {"autocast": "off"}, "mlflow": {"log_model": True}})
    run(["dvc", "repro"], pre, env=env_for(pre, **env))
    assert str(client.get_model_version_by_alias("gptpipe", "champion").version) == "1"

    ft = make_project(tmp_path / "ft", corpus=text, overrides={
        "train": {"init_from": "models:/gptpipe@champion", "autocast": "off"},
        "tokenizer": {"kind": "from_model"}, "mlflow": {"log_model": True}})
    first = run(["dvc", "repro"], ft, env=env_for(ft, **env)).stdout
    assert "Running stage 'train'" in first and "Running stage 'evaluate'" in first
    assert str(client.get_model_version_by_alias("gptpipe", "champion").version) == "2"
    assert dvc_status(ft, env_for(ft, **env), args=("train",)) == {}
    again = run(["dvc", "repro"], ft, env=env_for(ft, **env)).stdout
    assert "Running stage" not in again, again
    assert str(client.get_model_version_by_alias("gptpipe", "champion").version) == "2"
