"""Typed stage configs: (nested) frozen dataclasses filled from YAML files and ``key=value`` overrides.

* Sources, later wins: the dataclass defaults <- a YAML file <- ``key=value`` overrides <- values a CLI flag gave.
* Nested blocks are dataclass fields whose type is a dataclass; in YAML they are mappings, on the command line dotted
  keys (``train.lr=1e-3``). A plain leaf name (``lr=1e-3``) still works when exactly one block has that key. A block
  class may name one of its fields ``SHORTHAND`` (a ``ClassVar``): a scalar given for the block itself sets that field
  (``downstream=data.csv`` is ``downstream.file=data.csv``).
* Unknown keys are errors naming the close matches; values are coerced to the field's declared type.
* ``cifllm <stage> --help`` lists every key (:func:`config_help`) with its default and its ``#:`` comment.
* The resolved config is written into every run folder (``config.yaml``, :func:`save_config`) so a run can be repeated
  exactly; :func:`merge_for_resume` is the one resume policy of every stage that resumes. A stage writes it (and any
  other output) only after its inputs are read and checked - ``evaluate`` only once the run has succeeded - so a run
  that fails leaves an earlier run's folder as it was (``tests/test_cli_contract.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cifllm.core.errors import CifllmError
from cifllm.core.inputs import MAX_NESTING, data_depth, load_yaml
from cifllm.core.records import RunFiles
from cifllm.utils import atomic_write_text
from cifllm.utils.resources import resolve_path

__all__ = [
    "BlockAccess",
    "ConfigError",
    "FieldInfo",
    "config_help",
    "config_to_dict",
    "describe_config",
    "explicit_keys",
    "flatten",
    "load_config",
    "merge_for_resume",
    "parse_overrides",
    "resolve_run_config",
    "save_config",
]

C = TypeVar("C")


class ConfigError(CifllmError, ValueError):
    """A config file or override that does not fit the stage's config class."""



def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {tp} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_t = args[0] if args else Any
        items = [_coerce(v, item_t, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and "=" in v for v in value):
            value = parse_overrides(value)  # [a=1, b.c=2]: the key=value form of a mapping
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _is_block(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=3e-4", "train.seed=1"]`` -> ``{"lr": 3e-4, "train.seed": 1}`` (values parsed as YAML scalars; keys keep
    their dots, ``-`` becomes ``_``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise ConfigError(f"override {item!r} has no key")
        deep = ConfigError(f"override {k}: nested more than {MAX_NESTING} levels deep")
        try:
            value = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            value = v  # not YAML: the plain string
        except RecursionError:
            raise deep from None
        if data_depth(value) > MAX_NESTING:
            raise deep
        out[k] = value
    return out


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_path(path)  # a checkout path (train/configs/tiny.yaml) or builtin:<name> -> the packaged copy
    loaded = load_yaml(p, "config file", ConfigError) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return loaded


def flatten(values: Mapping[str, Any], cls: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys. With ``cls``, only mappings that stand for a nested block are flattened (a
    ``dict`` field such as ``source_weights`` stays one value)."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        sub = hints.get(k)
        if isinstance(v, Mapping) and (cls is None or _is_block(sub)):
            out.update(flatten(v, sub if cls is not None else None, f"{key}."))
        elif cls is not None and _is_block(sub) and getattr(sub, "SHORTHAND", None):
            out[f"{key}.{sub.SHORTHAND}"] = v
        else:
            out[key] = v
    return out


def _leaves(cls: type, prefix: str = "") -> dict[str, tuple[type, dataclasses.Field]]:
    """Every leaf key of ``cls`` (dotted) -> (owning class, field)."""
    out: dict[str, tuple[type, dataclasses.Field]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _is_block(hints[f.name]):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (cls, f)
    return out


def _resolve_key(key: str, leaves: Mapping[str, Any], cls: type) -> str:
    """A given key -> its dotted leaf key (a unique plain leaf name is accepted); else :class:`ConfigError`."""
    if key in leaves:
        return key
    if "." not in key:
        owners = [k for k in leaves if k.rsplit(".", 1)[-1] == key]
        if len(owners) == 1:
            return owners[0]
        if len(owners) > 1:
            raise ConfigError(f"key {key!r} of {cls.__name__} is ambiguous: write one of {owners}")
    close = difflib.get_close_matches(key, list(leaves), n=4, cutoff=0.6)
    close += [k for k in leaves if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1] and k not in close]
    hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(leaves)}"
    raise ConfigError(f"unknown key {key!r} for {cls.__name__}; {hint} (all keys: cifllm <stage> --help)")


def _block_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls: type[C], values: Mapping[str, Any], prefix: str = "", base: Any = None) -> C:
    """``cls`` from dotted ``values``; keys not given keep ``base``'s value (a block's own default: the default
    instance of the field holding it, e.g. fine-tuning's training arguments) or the class default."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if _is_block(tp):
            sub = {k[len(f.name) + 1 :]: v for k, v in values.items() if k.startswith(f"{f.name}.")}
            inner = getattr(base, f.name) if base is not None else _block_default(f)
            kwargs[f.name] = _build(tp, sub, f"{prefix}{f.name}.", inner)
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], tp, f"{prefix}{f.name}")
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        where = f" ({prefix.rstrip('.')})" if prefix else ""
        raise ConfigError(f"{cls.__name__}{where}: {exc}") from None


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from defaults <- YAML file <- ``overrides`` (``key=value`` strings or a mapping, nested or
    dotted) <- ``extra``. Raises :class:`ConfigError` on unknown keys (naming close matches) and bad values."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    leaves = _leaves(cls)
    merged: dict[str, Any] = {}
    layers: list[Mapping[str, Any]] = []
    if path is not None:
        layers.append(flatten(_read_yaml(path), cls))
    if overrides:
        given = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        layers.append(flatten(given, cls))
    if extra:
        layers.append(flatten(extra, cls))
    for layer in layers:
        for k, v in layer.items():
            merged[_resolve_key(k, leaves, cls)] = v
    return _build(cls, merged)


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data: nested blocks are mappings, tuples are lists."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomic)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def merge_for_resume(saved: C, given: C, explicit: Iterable[str], mutable: Iterable[str]) -> C:
    """The one resume policy: the config to continue a run with.

    ``saved`` is the run's saved config, ``given`` the config built from what the user gave now and ``explicit`` the
    dotted keys they gave (file + overrides). Explicit keys in ``mutable`` (bookkeeping that does not change the data
    order or the loss curve) take the new value; an explicit key outside it with a different value is an error;
    everything else keeps the saved value.
    """
    old, new = flatten(config_to_dict(saved), type(saved)), flatten(config_to_dict(given), type(given))
    mutable = set(mutable)
    changed = {k: new[k] for k in explicit if k in old and k in new and old[k] != new[k]}
    bad = sorted(k for k in changed if k not in mutable and k.rsplit(".", 1)[-1] not in mutable)
    if bad:
        detail = ", ".join(f"{k}: run has {old[k]!r}, given {changed[k]!r}" for k in bad)
        name = getattr(saved, "out", None) or "the run"
        raise ConfigError(
            f"cannot resume {name} with a different config ({detail}): these keys differ from the saved run config "
            f"and change the data order or the loss curve. Drop them from the command, or start a new run with another "
            f"out=..."
        )
    merged = dict(old)
    merged.update(changed)
    return load_config(type(saved), None, merged)


def explicit_keys(cls: type, path: str | Path | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None) -> set[str]:
    """The dotted leaf keys a YAML file and overrides set (what the user gave explicitly)."""
    leaves = _leaves(cls)
    keys: set[str] = set()
    if path is not None:
        keys |= {_resolve_key(k, leaves, cls) for k in flatten(_read_yaml(path), cls)}
    if overrides:
        given = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        keys |= {_resolve_key(k, leaves, cls) for k in flatten(given, cls)}
    return keys


class BlockAccess:
    """Read access to a nested block's key by its plain name (``cfg.lr`` for ``cfg.train.lr``), for code written
    against the flat config; a name held by no block is an ``AttributeError`` as usual. Writing goes through the
    blocks (``dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=...))``)."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                try:
                    block = object.__getattribute__(self, f.name)
                except AttributeError:
                    continue
                if dataclasses.is_dataclass(block) and not isinstance(block, type) and name in {g.name for g in dataclasses.fields(block)}:
                    return getattr(block, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------------- --help


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One key of a config class, for ``--help``: dotted ``key``, ``type`` and ``default`` as text, ``comment``."""

    key: str
    type: str
    default: str
    comment: str


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (on the field's line, or the ``#:`` lines just above it)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(src).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = lines[node.lineno - 1]
        parts = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#:"):
            parts.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        if "#:" in line:
            parts.append(line.split("#:", 1)[1].strip())
        if parts:
            out[node.target.id] = " ".join(parts)
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe_config(cls: type, prefix: str = "", base: Any = None) -> list[FieldInfo]:
    """Every key of ``cls`` (nested blocks dotted) with its type, default and comment (field metadata ``help`` or
    the ``#:`` comment)."""
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if _is_block(tp):
            out.extend(describe_config(tp, f"{prefix}{f.name}.", getattr(base, f.name) if base is not None else _block_default(f)))
            continue
        if base is not None:
            default: Any = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        text = yaml.safe_dump(_plain(default), default_flow_style=True).strip().removesuffix("...").strip()
        out.append(FieldInfo(f"{prefix}{f.name}", _type_name(tp), text, f.metadata.get("help") or comments.get(f.name, "")))
    return out


def config_help(cls: type, width: int = 118) -> str:
    """``--help`` text: one entry per key, ``key = default  (type)`` then its comment, indented."""
    rows = []
    for info in describe_config(cls):
        rows.append(f"  {info.key} = {info.default}  ({info.type})")
        if info.comment:
            rows.extend(textwrap.wrap(info.comment, width=width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(rows)


def resolve_run_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    resume: bool = False,
    extra: Mapping[str, Any] | None = None,
    mutable: Iterable[str] | None = None,
) -> C:
    """The config of a run that may be resumed (pretraining, fine-tuning, a sweep): ``cls`` from the file, overrides and
    ``extra``; with ``resume`` and a saved ``<run_dir>/config.yaml``, :func:`merge_for_resume` of the saved config and
    the keys given now (``mutable`` defaults to ``cls.RESUME_MUTABLE_KEYS``)."""
    cfg = load_config(cls, path, overrides, extra)
    saved = RunFiles(cfg.run_dir).config  # type: ignore[attr-defined]
    if resume and saved.is_file():
        given = explicit_keys(cls, path, overrides) | explicit_keys(cls, None, extra)
        keep = getattr(cls, "RESUME_MUTABLE_KEYS", ()) if mutable is None else mutable
        cfg = merge_for_resume(load_config(cls, saved), cfg, given, keep)
    return cfg
