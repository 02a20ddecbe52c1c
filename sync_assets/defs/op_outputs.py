"""Op outputs (certificate, resync and explain jobs) stored as JSON data, never as pickle.

Dagster's FilesystemIOManager pickles an op's output and a later step, or a re-execution in
another container, unpickles what it finds: whoever can write to the shared bucket could run code
in the container that holds every secret. Here an output is stored as JSON and read back with
`json.loads`, which builds data and never runs code; a value JSON cannot carry exactly is refused
when it is stored, with an error naming where in it, rather than coming back as something else.

The objects live at SYNC_ASSETS_STORAGE_URL/op_outputs (read from the environment, no config
field), beside the assets, so a re-execution in another container finds them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import dagster as dg

from sync_assets.object_storage import ObjectStore
from sync_assets.settings import storage_url

FOLDER = "op_outputs"
# Deeper than any output of ours; well inside Python's recursion limit for json.loads and dumps.
MAX_DEPTH = 64
_SCALARS = (str, bool, type(None))


class OpOutputNotStorable(TypeError):
    """An op output that JSON would not give back as it was (the op must return plain data)."""


class OpOutputUnreadable(ValueError):
    """A stored op output that is not JSON data: it is refused, never interpreted."""


def unstorable(value: object, where: str = "output", depth: int = 0) -> str | None:
    """Why `value` would not come back equal, and of the same types, from JSON; None if it would.

    Exact types only: a tuple would come back a list, an int key a str, an enum or a str subclass
    a plain str, a datetime not at all. Convert to dicts, lists, str, int, float, bool or None.
    """
    if depth > MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} deep"
    if type(value) in _SCALARS:
        return None
    if type(value) is int:
        # str() of an int over sys.get_int_max_str_digits() digits raises ValueError.
        return None if _int_fits(value) else f"{where} is an integer too long to store"
    if type(value) is float:
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot hold"
    if type(value) is list:
        problems = (unstorable(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        return next((problem for problem in problems if problem), None)
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                return f"{where} has a key of type {type(key).__name__}, not str"
        # Keys are named by position: they may be user ids, which no error text carries.
        problems = (
            unstorable(item, f"{where}[key {i}]", depth + 1)
            for i, item in enumerate(value.values())
        )
        return next((problem for problem in problems if problem), None)
    return (
        f"{where} is a {type(value).__name__}, not JSON data "
        "(dict, list, str, int, float, bool or None)"
    )


def _int_fits(value: int) -> bool:
    try:
        str(value)
    except ValueError:
        return False
    return True


def encode(value: object, what: str) -> bytes:
    """`value` as JSON; `OpOutputNotStorable` naming `what` if it would not round-trip."""
    problem = unstorable(value)
    if problem:
        raise OpOutputNotStorable(f"{what} cannot be stored as data: {problem}")
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def decode(data: bytes, what: str) -> object:
    """The JSON value in `data`; `OpOutputUnreadable` for anything else (nothing is executed)."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise OpOutputUnreadable(
            f"{what} is not JSON data ({type(error).__name__}): refused; re-run the step"
        ) from None


class JsonOpOutputIOManager(dg.ConfigurableIOManager):
    """Op outputs as JSON objects at SYNC_ASSETS_STORAGE_URL/op_outputs, read from the
    environment when used (no config field); read back as data only, never unpickled."""

    @staticmethod
    def _store() -> ObjectStore:
        return ObjectStore(storage_url())

    @staticmethod
    def _key(identifier: Sequence[str]) -> str:
        # [run id, step key, output name(, mapping key)]: unique per output of a run, and the
        # parent run's for an output a re-execution did not recompute.
        return "/".join([FOLDER, *identifier]) + ".json"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        key = self._key(context.get_identifier())
        data = encode(obj, f"the output {context.name!r} of {context.step_key}")
        self._store().write(key, lambda path: path.write_bytes(data))

    def load_input(self, context: dg.InputContext) -> object:
        upstream = context.upstream_output
        if upstream is None:
            raise OpOutputUnreadable(f"input {context.name!r} has no upstream output to load")
        store = self._store()
        key = self._key(upstream.get_identifier())
        what = f"the stored output {upstream.name!r} of {upstream.step_key}"
        if not store.exists(key):
            raise FileNotFoundError(f"{what} is not in {store.url}/{key}")
        with store.open(key) as source:
            return decode(source.read(), what)
