import pytest
import yaml

from conftest import ROOT, make_project, run
from gptpipe import params
from gptpipe.errors import UserError


def test_yaml11_float_is_accepted():
    p = params.from_dict({"train": {"lr": "2e-5", "min_lr": 0}})
    assert p.train.lr == 2e-5


def test_unknown_key_suggests_nearest():
    with pytest.raises(UserError, match=r"train\.lrr.*did you mean 'lr'"):
        params.from_dict({"train": {"lrr": 1.0}})


def test_n_embd_must_divide_by_heads():
    with pytest.raises(UserError, match=r"model\.n_embd"):
        params.from_dict({"model": {"n_embd": 130, "n_head": 4}})


# --- params.yaml as a user writes it -----------------------------------------------------


def test_the_repos_params_yaml_is_valid():
    p = params.load(ROOT / "params.yaml")
    assert p.split.train_fraction == 0.9


@pytest.mark.parametrize("section, typo, suggestion", [
    ("data", "sourse", "source"),
    ("clean", "stage_direction", "stage_directions"),
    ("tokenizer", "vocab", "vocab_size"),
    ("split", "train_frac", "train_fraction"),
    ("model", "n_embed", "n_embd"),
    ("train", "learning_rate", "learning_rate"),  # nothing close: valid keys listed
    ("evaluate", "batchsize", "batch_size"),
    ("sample", "topk", "top_k"),
    ("mlflow", "experiment_name", "experiment"),
])
def test_unknown_key_in_each_section(section, typo, suggestion):
    with pytest.raises(UserError) as err:
        params.from_dict({section: {typo: 1}})
    message = str(err.value)
    assert f"unknown key '{section}.{typo}'" in message
    if suggestion != typo:
        assert f"did you mean '{suggestion}'" in message
    else:  # nothing close: the valid keys are listed
        assert "valid:" in message


def test_unknown_section_suggests_nearest():
    with pytest.raises(UserError, match=r"unknown section 'trian'.*did you mean 'train'"):
        params.from_dict({"trian": {"lr": 1e-3}})
    with pytest.raises(UserError, match=r"unknown section 'wandb'.*valid: data, clean"):
        params.from_dict({"wandb": {}})


@pytest.mark.parametrize("raw, pattern", [
    ({"train": {"batch_size": "12"}}, r"train\.batch_size: expected an integer, got '12'"),
    ({"train": {"batch_size": 1.5}}, r"train\.batch_size: expected an integer"),
    ({"train": {"max_iters": True}}, r"train\.max_iters: expected an integer"),
    ({"train": {"lr": "fast"}}, r"train\.lr: expected a number, got 'fast'"),
    ({"train": {"lr": float("nan")}}, r"train\.lr: must be finite"),
    ({"model": {"bias": "yes"}}, r"model\.bias: expected true or false"),
    ({"data": {"source": 5}}, r"data\.source: expected a string"),
    ({"sample": {"prompts": [1, 2]}}, r"sample\.prompts: expected a list of strings"),
    ({"train": 5}, r"params: train: expected a mapping"),
])
def test_wrong_type_names_the_key(raw, pattern):
    with pytest.raises(UserError, match=pattern):
        params.from_dict(raw)


def test_yaml11_exponent_floats_from_a_file(tmp_path):
    # PyYAML (YAML 1.1) reads 2e-5 as a string; DVC's `-S train.lr=2e-5` writes it so.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 2e-5\n  min_lr: 1e-6\nsample:\n  temperature: 5E-1\n")
    assert isinstance(yaml.safe_load(path.read_text())["train"]["lr"], str)
    p = params.load(path)
    assert (p.train.lr, p.train.min_lr, p.sample.temperature) == (2e-5, 1e-6, 0.5)


@pytest.mark.parametrize("raw, key", [
    ({"train": {"lr": 0}}, "train.lr"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"lr": "-2e-5"}}, "train.lr"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"model": {"n_embd": 100, "n_head": 3}}, "model.n_embd"),
    ({"split": {"train_fraction": 0}}, "split.train_fraction"),
    ({"split": {"train_fraction": 1}}, "split.train_fraction"),
    ({"split": {"train_fraction": 1.0}}, "split.train_fraction"),
    ({"sample": {"temperature": -0.1}}, "sample.temperature"),
    ({"sample": {"top_k": 0}}, "sample.top_k"),
    ({"sample": {"top_k": -5}}, "sample.top_k"),
    ({"sample": {"top_p": 0}}, "sample.top_p"),
    ({"sample": {"top_p": 1.5}}, "sample.top_p"),
    ({"sample": {"max_new_tokens": 0}}, "sample.max_new_tokens"),
    ({"sample": {"max_new_tokens": -1}}, "sample.max_new_tokens"),
    # ranges that keep training and sampling finite
    ({"train": {"lr": 1e38}}, "train.lr"),
    ({"train": {"lr": "1e38"}}, "train.lr"),
    ({"train": {"lr": 1.5}}, "train.lr"),
    ({"train": {"min_lr": 0.01}}, "train.min_lr"),
    ({"train": {"weight_decay": 1e30}}, "train.weight_decay"),
    ({"train": {"weight_decay": -0.1}}, "train.weight_decay"),
    ({"train": {"beta1": 1.0}}, "train.beta1"),
    ({"train": {"beta2": -0.5}}, "train.beta2"),
    ({"train": {"grad_clip": 1e300}}, "train.grad_clip"),
    ({"train": {"muon_lr": 1e20}}, "train.muon_lr"),
    ({"train": {"seed": -1}}, "train.seed"),
    ({"train": {"threads": 100000}}, "train.threads"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"sample": {"temperature": 1e-30}}, "sample.temperature"),
    ({"sample": {"temperature": 1e6}}, "sample.temperature"),
    ({"sample": {"seed": -3}}, "sample.seed"),
    ({"data": {"timeout_s": 1e12}}, "data.timeout_s"),
    ({"clean": {"max_replaced_fraction": 1.5}}, "clean.max_replaced_fraction"),
    ({"split": {"max_val_overlap": -0.1}}, "split.max_val_overlap"),
])
def test_out_of_range_values_name_the_key(raw, key):
    with pytest.raises(UserError) as err:
        params.from_dict(raw)
    message = str(err.value)
    assert message.startswith(f"params: {key}: must be "), message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["utf-8", "auto", "koi8_r", "KOI8-R", "cp1251", "utf-16",
                                  "utf_32", "latin-1"])
def test_clean_encoding_accepts_auto_and_any_python_codec(name):
    assert params.from_dict({"clean": {"encoding": name}}).clean.encoding == name


def test_unknown_clean_encoding_is_one_line_naming_the_key():
    with pytest.raises(UserError) as err:
        params.from_dict({"clean": {"encoding": "utf-9"}})
    assert str(err.value).startswith("params: clean.encoding: unknown codec 'utf-9'")
    assert "\n" not in str(err.value)


def test_boundary_values_are_valid():
    p = params.from_dict({
        "sample": {"top_k": None, "top_p": 1.0, "temperature": 0, "max_new_tokens": 1},
        "split": {"train_fraction": 0.5}, "model": {"n_embd": 96, "n_head": 3},
    })
    edge = params.from_dict({"train": {"lr": 1.0, "min_lr": 1.0, "weight_decay": 1.0,
                                       "beta1": 0.0, "grad_clip": 0},
                             "sample": {"temperature": 0.01, "top_p": 1.0},
                             "clean": {"max_replaced_fraction": 0},
                             "split": {"max_val_overlap": 1}})
    assert (edge.train.lr, edge.sample.temperature, edge.split.max_val_overlap) == (1.0, 0.01, 1.0)
    assert p.sample.top_k is None and p.sample.top_p == 1.0 and p.sample.temperature == 0.0
    assert params.from_dict({"sample": {"top_k": 1}}).sample.top_k == 1


@pytest.fixture(scope="module")
def clean_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("params") / "proj", corpus="To be.\n")


@pytest.mark.parametrize("bad_yaml, needles", [
    ("clean:\n  on_invalid_utf8: ignore\n", ["clean.on_invalid_utf8", "error, replace", "'ignore'"]),
    ("clean:\n  stage_direction: true\n", ["clean.stage_direction", "did you mean 'stage_directions'"]),
    ("train:\n  lr: 0\n", ["train.lr", "in (0, 1]"]),
    ("train:\n  lr: 1e38\n", ["train.lr", "in (0, 1]", "1e+38"]),
    ("clean:\n  encoding: klingon-8\n", ["clean.encoding", "unknown codec 'klingon-8'"]),
    ("clean:\n  ascii_punctuation: [\n", ["params.yaml", "not valid YAML"]),
])
def test_bad_params_yaml_stops_a_stage_with_one_line(clean_project, bad_yaml, needles):
    project = clean_project
    params_file = project / "params.yaml"
    good = params_file.read_text()
    try:
        params_file.write_text(bad_yaml)
        result = run(["python", "stages/clean.py"], project, check=False)
    finally:
        params_file.write_text(good)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clean: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (project / "data/clean/corpus.txt").exists()
