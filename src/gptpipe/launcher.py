"""train.launcher (checked by params.launcher_problem): `python` runs the train
stage as it is; `torchrun ...` has the stage start itself again under torchrun
(DistributedDataParallel, on one machine or several).

The stage does this itself, rather than dvc.yaml interpolating `${train.launcher}`
into its cmd: interpolation has DVC parse params.yaml and an expression grammar on
every `dvc repro`, a no-op one included, for a value that changes no result."""
from __future__ import annotations

import os
import sys


def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets LOCAL_RANK for each worker)."""
    return "LOCAL_RANK" in os.environ


def relaunch_argv(launcher: str, script: str) -> list[str] | None:
    """The command that runs `script` under `launcher`, or None when this process
    is already what it asks for: `python`, or a worker torchrun started. torchrun
    runs as `-m torch.distributed.run` of this interpreter, so its workers get the
    stage's environment whatever PATH holds."""
    words = launcher.split()
    if words[0] != "torchrun" or under_torchrun():
        return None
    return [sys.executable, "-m", "torch.distributed.run", *words[1:], script]
