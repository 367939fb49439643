"""How calls, values and errors cross the tracking process's socket: JSON, never
pickle. A value is JSON's own types plus the few the stage sends (paths, tuples,
RunSpec, LoggedModel), each tagged; a function travels as its name and is looked
up in a fixed table on the other side; an error travels as its type's name and
message, and a UserError stays a UserError (the stage prints it as one line)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import UserError


class TrackingProcessError(RuntimeError):
    """The tracking process died, or a call failed there with an error other than a
    UserError."""


def dumps(message) -> bytes:
    return json.dumps(_encode(message)).encode("utf-8")


def loads(data: bytes):
    return _decode(json.loads(data.decode("utf-8")))


def function_name(fn) -> str:
    """A module-level function as "module:name"; a Tracker method stays its name."""
    return fn if isinstance(fn, str) else f"{fn.__module__}:{fn.__qualname__}"


def error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc),
            "user": isinstance(exc, UserError)}


def raise_error(err: dict) -> None:
    if err["user"]:
        raise UserError(err["message"])
    raise TrackingProcessError(f"{err['type']}: {err['message']}")


def _dataclasses() -> dict[str, type]:
    # imported here: background imports the process module, which imports this one
    from .background import RunSpec
    from .registry import LoggedModel

    return {"RunSpec": RunSpec, "LoggedModel": LoggedModel}


def _encode(obj):
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, Path):
        return {"$path": str(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(x) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):  # keys of any JSON-able type, in order
        return {"$dict": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in _dataclasses():
        return {"$dataclass": type(obj).__name__,
                "fields": {f.name: _encode(getattr(obj, f.name))
                           for f in dataclasses.fields(obj)}}
    if hasattr(obj, "item"):  # a numpy or torch scalar
        return _encode(obj.item())
    raise TypeError(f"cannot send a {type(obj).__name__} to the tracking process")


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "$path" in obj:
        return Path(obj["$path"])
    if "$tuple" in obj:
        return tuple(_decode(x) for x in obj["$tuple"])
    if "$dict" in obj:
        return {_decode(k): _decode(v) for k, v in obj["$dict"]}
    if "$dataclass" in obj:
        return _dataclasses()[obj["$dataclass"]](
            **{k: _decode(v) for k, v in obj["fields"].items()})
    raise ValueError(f"not a value the tracking process sends: {sorted(obj)}")
