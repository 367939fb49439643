"""How calls, values and errors cross the tracking process's socket: JSON, never
pickle. A value is JSON's own types plus paths, tuples and the dataclasses the
caller names (the process: RunSpec, LoggedModel), each tagged; a function travels as its name and is looked
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


def dumps(types: dict[str, type], message) -> bytes:
    """`message` as JSON; `types`: the dataclasses it may hold, by name."""
    return json.dumps(_encode(message, types)).encode("utf-8")


def loads(types: dict[str, type], data: bytes):
    return _decode(json.loads(data.decode("utf-8")), types)


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


def _encode(obj, types: dict[str, type]):
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, Path):
        return {"$path": str(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(x, types) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x, types) for x in obj]
    if isinstance(obj, dict):  # keys of any JSON-able type, in order
        return {"$dict": [[_encode(k, types), _encode(v, types)] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and types.get(type(obj).__name__) is type(obj):
        return {"$dataclass": type(obj).__name__,
                "fields": {f.name: _encode(getattr(obj, f.name), types)
                           for f in dataclasses.fields(obj)}}
    if hasattr(obj, "item"):  # a numpy or torch scalar
        return _encode(obj.item(), types)
    raise TypeError(f"cannot send a {type(obj).__name__} to the tracking process")


def _decode(obj, types: dict[str, type]):
    if isinstance(obj, list):
        return [_decode(x, types) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "$path" in obj:
        return Path(obj["$path"])
    if "$tuple" in obj:
        return tuple(_decode(x, types) for x in obj["$tuple"])
    if "$dict" in obj:
        return {_decode(k, types): _decode(v, types) for k, v in obj["$dict"]}
    if "$dataclass" in obj:
        return types[obj["$dataclass"]](
            **{k: _decode(v, types) for k, v in obj["fields"].items()})
    raise ValueError(f"not a value the tracking process sends: {sorted(obj)}")
