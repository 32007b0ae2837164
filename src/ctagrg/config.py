"""Config dataclasses: load from YAML/JSON/dict, apply ``--set key=value`` overrides, save resolved.

Every configurable component owns a ``@dataclass`` next to its code. This module only converts between those
dataclasses and plain data, with errors a human can act on:

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Optim:
...     lr: float = 1e-4
>>> @dataclass
... class Run:
...     epochs: int = 2
...     optim: Optim = field(default_factory=Optim)
>>> cfg = from_dict(Run, {"optim": {"lr": 0.01}})
>>> cfg = apply_overrides(cfg, ["epochs=5"])
>>> (cfg.epochs, cfg.optim.lr)
(5, 0.01)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ctagrg.utils.atomic import write_text_atomic

# defined in utils (utils.device raises it too); the project imports it from here
from ctagrg.utils.errors import ConfigError as ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert plain data ``value`` to type ``tp`` (dataclass, tuple, list, scalar); raise ConfigError if it can't."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, where)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return _coerce_sequence(value, tp, where)
    if origin is dict or tp is Any or origin is typing.Literal:
        return value
    if tp is bool:
        return _coerce_bool(value, where)
    if tp in (int, float, str):
        return _coerce_scalar(value, tp, where)
    return value


def _coerce_dataclass(value: Any, tp: type, where: str) -> Any:
    if dataclasses.is_dataclass(value):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
    return from_dict(tp, value, where=where)


def _coerce_sequence(value: Any, tp: Any, where: str) -> tuple[Any, ...] | list[Any]:
    """``tuple[A, B]`` (one value per type, in order), ``tuple[A, ...]`` or ``list[A]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    inner = args[0] if args else Any
    seq = [_coerce(v, inner, where) for v in value]
    return tuple(seq) if origin is tuple else seq


def _coerce_bool(value: Any, where: str) -> bool:
    if not isinstance(value, str):
        return bool(value)
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _coerce_scalar(value: Any, tp: type, where: str) -> Any:
    """``int`` (a float only when it is whole), ``float`` or ``str``."""
    try:
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def _check_removed(cls: type, key: str, where: str) -> None:
    """A key listed in ``cls.REMOVED_KEYS`` (a key of older configs) raises with what replaces it."""
    hint = getattr(cls, "REMOVED_KEYS", {}).get(key)
    if hint:
        raise ConfigError(f"{where}.{key}: {hint}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping. Unknown keys raise with the valid keys listed, keys
    of older configs (``cls.REMOVED_KEYS``) with what replaces them."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    for key in unknown:
        _check_removed(cls, key, where)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # raised by the dataclass's own checks, e.g. a plug-in section: name the file
        if where == "config" or str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (tuples become lists), suitable for JSON/YAML."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _set_path(cfg: Any, dotted: str, raw: str) -> Any:
    head, _, rest = dotted.partition(".")
    types_ = _field_types(type(cfg))
    if head not in types_:
        _check_removed(type(cfg), head, f"override {type(cfg).__name__}")
        raise ConfigError(f"override {dotted!r}: unknown key {head!r} for {type(cfg).__name__}; "
                          f"valid keys: {', '.join(types_)}")
    if rest:
        child = getattr(cfg, head)
        if isinstance(child, dict):  # a free-form section (plug-in options): nested keys are created as needed
            return dataclasses.replace(cfg, **{head: _set_in_mapping(child, rest, raw)})
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"override {dotted!r}: {head!r} is not a section")
        return dataclasses.replace(cfg, **{head: _set_path(child, rest, raw)})
    value = yaml.safe_load(raw) if raw != "" else ""
    return dataclasses.replace(cfg, **{head: _coerce(value, types_[head], f"override {dotted}")})


def _set_in_mapping(mapping: dict[str, Any], dotted: str, raw: str) -> dict[str, Any]:
    """A copy of ``mapping`` with the value at dotted key ``dotted`` set to ``raw`` parsed as YAML."""
    head, _, rest = dotted.partition(".")
    out = dict(mapping)
    if rest:
        child = out.get(head) or {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {head!r} is not a section")
        out[head] = _set_in_mapping(child, rest, raw)
    else:
        value = yaml.safe_load(raw) if raw != "" else ""
        if value is None:  # `key=null` removes the entry (a plug-in section switched off; in a file, `key:` is {})
            out.pop(head, None)
        else:
            out[head] = value
    return out


def apply_overrides(cfg: T, overrides: list[str] | None) -> T:
    """Apply ``key=value`` strings (dotted keys for nested sections; values parsed as YAML scalars/lists)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        cfg = _set_path(cfg, key.strip(), raw.strip())
    return cfg


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML or JSON file (or defaults when ``path`` is None), then apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    cfg = from_dict(cls, data, where=str(path) if path else "config")
    return apply_overrides(cfg, overrides)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a saved config, settings or metrics); ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config atomically, as JSON (``.json``) or YAML (anything else)."""
    data = to_dict(cfg)
    path = Path(path)
    if path.suffix == ".json":
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    else:
        write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
