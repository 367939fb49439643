"""The `gptpipe.config` tag: the same for runs that differ only in train.seed (or
in settings that change no result), different for another lr; it names the
params that differ from the shipped defaults."""
from __future__ import annotations

import dataclasses
import hashlib
import re

from projects import ROOT

from gptpipe import config_id
from gptpipe.params import Params, load


def _flat(**train) -> dict:
    p = Params()
    return dataclasses.replace(p, train=dataclasses.replace(p.train, **train)).flat()


def test_same_config_other_seed_same_tag():
    assert config_id.config_tag(_flat(seed=1)) == config_id.config_tag(_flat(seed=2))


def test_settings_that_change_no_result_do_not_split():
    base = config_id.config_tag(_flat())
    assert config_id.config_tag(_flat(threads=2, checkpoint_interval=7)) == base


def test_other_lr_other_tag_named_by_what_differs():
    base, other = config_id.config_tag(_flat()), config_id.config_tag(_flat(lr=3.0e-3))
    assert re.fullmatch(r"[0-9a-f]{8}", base), base  # the defaults: nothing to name
    assert re.fullmatch(r"[0-9a-f]{8} lr=3e-3", other), other
    assert base[:8] != other[:8]
    assert config_id.config_tag(_flat(lr=3.0e-3, seed=9)) == other


def test_the_hash_is_the_canonical_json_of_the_config():
    """sha256 of the sorted, compact JSON of the config keys (no seed, no neutral
    ones): any other encoding would split every existing group in MLflow."""
    flat = {"train.lr": 0.003, "model.n_embd": 64, "train.seed": 5, "train.threads": 2,
            "sample.temperature": 0.5, "mlflow.experiment": "x", "sample.prompts": ["a"]}
    blob = b'{"model.n_embd":64,"train.lr":0.003}'
    assert config_id.config_hash(flat) == hashlib.sha256(blob).hexdigest()[:8] == "8753b7e1"


def test_shipped_params_yaml_is_the_default_config():
    assert config_id.config_tag(load(ROOT / "params.yaml").flat()) == \
        config_id.config_tag(Params().flat())


def test_values_as_a_sweep_writes_them():
    fmt = config_id.format_param
    assert [fmt(3.0e-3), fmt(0.5), fmt(128), fmt(True), fmt(1.0e-4), fmt("a b")] == \
        ["3e-3", "0.5", "128", "true", "1e-4", '"a b"']


def test_a_short_name_shared_by_two_sections_keeps_its_section():
    p = Params()
    flat = dataclasses.replace(p, model=dataclasses.replace(p.model, kind="bigram")).flat()
    assert config_id.config_tag(flat).endswith(" model.kind=bigram")
