"""The run's data as MLflow datasets (the run page's Datasets): the train and val
token arrays and the raw corpus they came from, each named by its sha256.

A dataset's digest is its sha256's first 12 hex digits, as git abbreviates commits:
MLflow caps digests at 36 characters and its Datasets column cuts long ones off.
The whole sha256 is in the dataset's profile (and in the run's data.sha256.* tags).
"""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from .store import retry_locked

if TYPE_CHECKING:
    from .runs import Tracker

_DIGEST_CHARS = 12
_CONTEXTS = {"train": "training", "val": "validation"}


def dataset_digest(sha256: str) -> str:
    """The digest MLflow shows for a dataset of this sha256 (metrics name it too)."""
    return sha256[:_DIGEST_CHARS]


def log_data_inputs(tracker: Tracker, run_id: str, arrays: dict[str, tuple[Path, str]],
                    download_report: Path | None) -> None:
    """The token arrays ({name: (path, sha256)}, train and val) and the raw corpus
    (from the download stage's report, when there is one) as the run's dataset
    inputs. Logging them again is a no-op: MLflow keeps one input per (name, digest)."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(array_dataset(name, path, sha256),
                           [InputTag("mlflow.data.context", _CONTEXTS.get(name, name))])
              for name, (path, sha256) in arrays.items()]
    if download_report is not None and Path(download_report).exists():
        inputs.append(DatasetInput(corpus_dataset(download_report),
                                   [InputTag("mlflow.data.context", "source")]))
    # Runs of the same data logging at once (a sweep, several writers on one server)
    # race to insert the same dataset row; the loser's retry finds it (logging again
    # is a no-op, so a retry is safe).
    retry_locked(tracker.client.log_inputs, run_id, datasets=inputs,
                 retry_on=("UniqueViolation", "UNIQUE constraint failed", "Duplicate entry"))


def array_dataset(name: str, path: Path, sha256: str):
    """A token array as an MLflow dataset entity: its dtype and shape (from the .npy
    header of a memory map: nothing is read or copied), its abbreviated sha256 as the
    digest and the whole one in the profile."""
    import mlflow.data
    import numpy as np
    from mlflow.entities import Dataset

    tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    dataset = mlflow.data.from_numpy(tokens, source=_local_source(Path(path).as_posix()),
                                     name=name, digest=dataset_digest(sha256))
    fields = dataset.to_dict()
    fields["profile"] = json.dumps({**json.loads(fields["profile"]), "sha256": sha256})
    return Dataset(**fields)


def corpus_dataset(download_report: Path):
    """The raw corpus as an MLflow dataset entity, from the download stage's report:
    its (redacted) source, its abbreviated sha256 as the digest, and in the profile the
    whole sha256, its size and file count."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    from ..files import read_json

    report = read_json(download_report)
    origin = report.get("source", "unknown")
    if urllib.parse.urlsplit(origin).scheme in ("http", "https"):
        source = HTTPDatasetSource(origin)  # already redacted by the download stage
    else:  # a path, or the embedded plays: DVC tracks what was read in data/raw
        source = _local_source(origin if report.get("kind") != "shakespeare" else "data/raw")
    sha256 = report.get("sha256", "unknown")
    fields = MetaDataset(source, name="corpus", digest=sha256[:_DIGEST_CHARS]).to_dict()
    fields["profile"] = json.dumps({"data.source": origin, "kind": report.get("kind"),
                                    "files": len(report.get("files", [])),
                                    "bytes": report.get("bytes"), "sha256": sha256})
    return Dataset(**fields)


def _local_source(path: str):
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": path}), source_type="local")
