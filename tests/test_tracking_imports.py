"""The MLflow package's import rule: `gptpipe.tracking` and the modules the train
stage imports before training (store, runs, datasets, background) import neither
mlflow nor torch; MLflow is imported where it is used, in the background."""
from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import gptpipe.tracking, gptpipe.tracking.store
light = sorted({m.split(".")[0] for m in sys.modules})
import gptpipe.tracking.background, gptpipe.tracking.datasets, gptpipe.tracking.runs
print(json.dumps({"store": light, "background": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_the_package_and_the_train_stages_modules_import_no_mlflow():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    for when, modules in loaded.items():
        assert "gptpipe" in modules
        assert not {"mlflow", "torch", "pandas"} & set(modules), (when, modules)
