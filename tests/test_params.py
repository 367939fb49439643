import dataclasses
import re
from typing import get_type_hints

import pytest
import yaml

from helpers import make_project, one_error_line, run
from projects import ROOT
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


# --- params.yaml and the dataclasses: one set of keys, one set of defaults ---------------


def fields_of(p: params.Params) -> dict[str, object]:
    """`section.key -> value` for every field of the typed params."""
    return {f"{s.name}.{f.name}": getattr(getattr(p, s.name), f.name)
            for s in dataclasses.fields(p) for f in dataclasses.fields(getattr(p, s.name))}


def yaml_keys(raw: dict) -> set[str]:
    return {f"{section}.{key}" for section, values in raw.items() for key in values or {}}


def inline_comments(text: str) -> dict[str, str]:
    """`section.key -> its trailing comment` in a params.yaml written as this repo's."""
    comments, section = {}, None
    for line in text.splitlines():
        if match := re.match(r"^(\w+):", line):
            section = match.group(1)
        elif (match := re.match(r"^  (\w+):(.*)$", line)) and section:
            comment = re.search(r"\s#\s?(.*)$", match.group(2))
            comments[f"{section}.{match.group(1)}"] = comment.group(1) if comment else ""
    return comments


def choice_keys() -> dict[str, tuple[str, ...]]:
    """`section.key -> its choices` for every `Literal` field."""
    return {f"{section}.{name}": params.choices(kind)
            for section, cls in get_type_hints(params.Params).items()
            for name, kind in get_type_hints(cls).items() if params.choices(kind) is not None}


_NUMBER = r"([-+]?[\d.]+(?:e[-+]?\d+)?)"
_RANGES = [  # how params.yaml's comments state a range -> (lo, hi, lo_open, hi_open)
    (rf"strictly between {_NUMBER} and {_NUMBER}\b", lambda a, b: (a, b, True, True)),
    (rf"(?<!strictly )between {_NUMBER} and {_NUMBER}\b", lambda a, b: (a, b, False, False)),
    (rf"in \({_NUMBER}, {_NUMBER}\]", lambda a, b: (a, b, True, False)),
    (rf"in \[{_NUMBER}, {_NUMBER}\)", lambda a, b: (a, b, False, True)),
    (rf"in \[{_NUMBER}, {_NUMBER}\]", lambda a, b: (a, b, False, False)),
    (rf"in \({_NUMBER}, {_NUMBER}\)", lambda a, b: (a, b, True, True)),
    (rf"(?<![\w.]){_NUMBER}\.\.{_NUMBER}\b", lambda a, b: (a, b, False, False)),
    (rf"up to {_NUMBER}\b", lambda b: (None, b, False, False)),  # lo: not stated
    (rf"(?<![<>])>= {_NUMBER}\b", lambda a: (a, None, False, False)),
    (rf"(?<![<>])> {_NUMBER}\b", lambda a: (a, None, True, False)),
]


def comment_range(comment: str) -> tuple | None:
    """The numeric range a params.yaml comment states, (lo, hi, lo_open, hi_open);
    None when it states none (`between 0 and lr` is a rule across keys)."""
    for pattern, build in _RANGES:
        if match := re.search(pattern, comment):
            return build(*(float(n) for n in match.groups()))
    return None


def field_rules() -> dict[str, object]:
    """`section.key -> the rule in its field's metadata` (a params.Range or Rule)."""
    return {f"{s.name}.{f.name}": params.rule_of(f) for s in dataclasses.fields(params.Params)
            for f in dataclasses.fields(getattr(params.Params(), s.name))
            if params.rule_of(f) is not None}


def range_problems(comments: dict[str, str]) -> list[str]:
    """Where a params.yaml comment states a range other than its field's Range."""
    problems, rules = [], field_rules()
    for key, comment in comments.items():
        stated = comment_range(comment)
        if stated is None:
            continue
        rule = rules.get(key)
        if not isinstance(rule, params.Range):
            problems.append(f"{key}: the params.yaml comment states a range, params.py "
                            f"has none: {comment!r}")
            continue
        lo, hi, lo_open, hi_open = stated
        if (hi, hi_open) != (rule.hi, rule.hi_open) or (
                lo is not None and (lo, lo_open) != (rule.lo, rule.lo_open)):
            problems.append(f"{key}: the params.yaml comment states another range than "
                            f"params.py's ({rule.describe()}): {comment!r}")
    return problems


def params_yaml_problems(text: str) -> list[str]:
    """What differs between a params.yaml and the dataclasses in params.py."""
    raw = yaml.safe_load(text)
    defaults = fields_of(params.Params())
    listed = yaml_keys(raw)
    problems = [f"{key}: in params.py but missing from params.yaml"
                for key in sorted(defaults.keys() - listed)]
    problems += [f"{key}: in params.yaml but params.py has no such key"
                 for key in sorted(listed - defaults.keys())]
    if problems:
        return problems
    values = fields_of(params.from_dict(raw))
    problems += [f"{key}: params.yaml says {values[key]!r}, the dataclass default is "
                 f"{defaults[key]!r}" for key in sorted(defaults) if values[key] != defaults[key]]
    comments = inline_comments(text)
    for key, allowed in choice_keys().items():
        missing = [c for c in allowed if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])",
                                                      comments.get(key, ""))]
        if missing:
            problems.append(f"{key}: the params.yaml comment does not list "
                            f"{', '.join(missing)} (choices: {' | '.join(allowed)})")
    return problems + range_problems(comments)


def test_params_yaml_matches_the_dataclasses():
    problems = params_yaml_problems((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert not problems, "params.yaml and params.py disagree:\n" + "\n".join(problems)


def test_every_choice_key_is_a_literal_the_check_uses():
    assert choice_keys() == {
        "clean.on_invalid_utf8": ("error", "replace"),
        "tokenizer.kind": ("char", "bpe", "tiktoken", "from_model"),
        "tokenizer.unknown_chars": ("error", "drop", "replace"),
        "model.kind": ("gpt", "bigram", "modern"),
        "train.device": ("auto", "cpu", "cuda", "mps"),
        "train.autocast": ("auto", "bf16", "off"),
        "train.optimizer": ("adamw", "muon"),
        "train.muon_ns_coefficients": ("quintic", "polar_express"),
        "train.keep": ("best", "last"),
    }
    for key, allowed in choice_keys().items():  # the message lists the Literal's choices
        section, name = key.split(".")
        with pytest.raises(UserError, match=re.escape(
                f"params: {key}: must be one of {', '.join(allowed)}, got 'nope'")):
            params.from_dict({section: {name: "nope"}})
        with pytest.raises(UserError, match=rf"params: {re.escape(key)}: expected a string"):
            params.from_dict({section: {name: 3}})


def test_the_ranges_params_yaml_states_are_read_and_each_is_its_fields():
    comments = inline_comments((ROOT / "params.yaml").read_text(encoding="utf-8"))
    stated = {key for key, comment in comments.items() if comment_range(comment)}
    assert stated == {"data.timeout_s", "data.retries", "clean.max_replaced_fraction",
                      "split.train_fraction", "split.max_val_overlap", "model.dropout",
                      "train.lr", "train.weight_decay", "train.beta1", "train.beta2",
                      "train.muon_momentum", "train.muon_ns_steps",
                      "train.grad_clip", "train.threads", "train.early_stop_patience",
                      "train.early_stop_min_delta", "train.peak_gflops", "evaluate.train_windows",
                      "sample.temperature", "sample.top_p"}
    assert not range_problems(comments)
    assert comment_range("in (0, 1]; 1.0 = off") == (0, 1, True, False)
    assert comment_range("between 0 and lr") is None
    assert comment_range("0 = all; >= 0") == (0, None, False, False)


def test_every_single_key_rule_is_beside_its_field_and_its_default_follows_it():
    rules = field_rules()
    assert isinstance(rules["train.lr"], params.Range)
    assert rules["train.lr"] is rules["train.muon_lr"] is params.LR_RANGE
    assert "train.min_lr" not in rules  # between 0 and train.lr: a rule across keys
    defaults = fields_of(params.Params())
    for key, rule in rules.items():
        assert defaults[key] is None or rule.error(defaults[key]) is None, key
    assert params.Range(1).describe() == ">= 1"
    assert params.Range(0, lo_open=True).describe() == "> 0"
    assert params.Range(0, 10).describe() == "between 0 and 10"
    assert params.Range(0, 3600, lo_open=True).describe() == "in (0, 3600]"
    assert params.Range(0, 1, hi_open=True).describe() == "in [0, 1)"
    assert params.Range(0, 1, lo_open=True, hi_open=True).describe() == \
        "strictly between 0 and 1"


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("old, new, problem", [
    ("  muon_lr: 0.02", "", "train.muon_lr: in params.py but missing from params.yaml"),
    ("  seed: 1337\n", "  seed: 1337\n  sead: 1\n",
     "train.sead: in params.yaml but params.py has no such key"),
    ("  max_new_tokens: 400", "  max_new_tokens: 500",
     "sample.max_new_tokens: params.yaml says 500, the dataclass default is 400"),
    ('  prompts: ["\\n", "ROMEO:"]', '  prompts: ["\\n"]', "sample.prompts: params.yaml says"),
    ("| bigram | modern", "| bigram",
     "model.kind: the params.yaml comment does not list modern"),
    ("  optimizer: adamw      # adamw | muon", "  optimizer: adamw      # adamw",
     "train.optimizer: the params.yaml comment does not list muon"),
    ("lr: 1.0e-3            # in (0, 1]", "lr: 1.0e-3            # in (0, 1)",
     "train.lr: the params.yaml comment states another range than params.py's (in (0, 1])"),
    ("backoff: 0..10", "backoff: 0..5",
     "data.retries: the params.yaml comment states another range than params.py's"),
    ("  seed: 1337\n", "  seed: 1337  # between 0 and 100\n",
     "train.seed: the params.yaml comment states another range than params.py's"),
    ("# optional: the expected sha256", "# 0..64: the expected sha256",
     "data.sha256: the params.yaml comment states a range, params.py has none"),
])
def test_a_drifted_params_yaml_is_caught(old, new, problem):
    text = _edit((ROOT / "params.yaml").read_text(encoding="utf-8"), old, new)
    problems = params_yaml_problems(text)
    assert any(p.startswith(problem) for p in problems), problems


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
    one_error_line(result, "clean", *needles)
    assert not (project / "data/clean/corpus.txt").exists()


def test_params_yaml_is_read_as_dvc_reads_it(tmp_path):
    """YAML 1.2, like DVC: the bare `off` that `dvc exp run -S train.autocast=off`
    writes is the string off (YAML 1.1 reads false), and 2e-5 is a number."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  autocast: off\n  lr: 2e-5\n  min_lr: 1e-6\n")
    p = params.load(path)
    assert p.train.autocast == "off"
    assert p.train.lr == 2e-5 and p.train.min_lr == 1e-6
