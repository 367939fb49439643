import pytest

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
