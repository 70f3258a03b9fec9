"""The one reader of the files a user gives cifllm (configs, registries, prompt files, samples, records): text, JSON,
JSON lines and YAML.

Whatever is wrong with such a file becomes one error naming the file (and the line) and the reason, never a bare
library exception: a missing path (``does not exist``), a folder where a file is expected (``is a directory``), a
file that cannot be read (its ``strerror``), binary content (a NUL byte) or text that is not UTF-8, invalid JSON or
YAML, and JSON or YAML nested deeper than :data:`MAX_NESTING` levels (a ``RecursionError`` inside the parser
otherwise). The error class is the caller's (``PromptError``, ``SamplesError``, ``ConfigError``, ...; default
:class:`InputError`), so each stage keeps its own error names; ``cifllm <stage>`` reports every one in one line with
exit code 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cifllm.core.errors import CifllmError

__all__ = [
    "MAX_NESTING",
    "InputError",
    "check_file",
    "data_depth",
    "iter_jsonl",
    "load_json",
    "load_yaml",
    "nesting_depth",
    "parse_json",
    "parse_yaml",
    "read_text",
]

#: Deepest nesting of brackets / indentation blocks accepted in a JSON or YAML input (no cifllm file comes close to
#: 50; Python's parsers hit the recursion limit near 1,000).
MAX_NESTING = 200


class InputError(CifllmError, ValueError):
    """An input file that cannot be read as what it should be; the message names the file and the reason."""


def check_file(path: str | Path, what: str = "file", error: type[Exception] = InputError) -> Path:
    """``path`` as a ``Path`` when it is an existing file; else ``error`` saying ``does not exist`` or ``is a
    directory`` (``what`` names the role, e.g. ``"prompt file"``)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p}: is a directory, expected a file")
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    return p


def read_text(path: str | Path, what: str = "file", error: type[Exception] = InputError) -> str:
    """The UTF-8 text of the file ``path`` (see the module docstring for the errors)."""
    p = check_file(path, what, error)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise error(f"{what} {p}: cannot be read ({exc.strerror or exc})") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{what} {p}: binary content (NUL byte at offset {nul}), expected text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` brackets in ``text``, ignoring brackets inside double-quoted strings (a
    cheap upper bound on a JSON document's depth, computed without recursion)."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def _too_deep(where: str) -> str:
    return f"{where}: nested more than {MAX_NESTING} levels deep"


def parse_json(text: str, where: str, error: type[Exception] = InputError) -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ``error`` naming ``where`` (``file:line``)."""
    if text.count("[") + text.count("{") > MAX_NESTING and nesting_depth(text) > MAX_NESTING:  # cheap count first
        raise error(_too_deep(where))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(_too_deep(where)) from None


def data_depth(obj: Any) -> int:
    """Levels of nested lists / mappings in a parsed document (iterative: any depth is measured safely)."""
    best = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            items: Any = o.values()
        elif isinstance(o, (list, tuple)):
            items = o
        else:
            continue
        best = max(best, d + 1)
        if best > MAX_NESTING:
            return best
        stack.extend((x, d + 1) for x in items)
    return best


def parse_yaml(text: str, where: str, error: type[Exception] = InputError) -> Any:
    """``yaml.safe_load(text)``; invalid or too deeply nested YAML raises ``error`` naming ``where``."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{where}: invalid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise error(_too_deep(where)) from None
    if data_depth(loaded) > MAX_NESTING:
        raise error(_too_deep(where))
    return loaded


def load_json(path: str | Path, what: str = "JSON file", error: type[Exception] = InputError) -> Any:
    """The JSON document of the file ``path``."""
    return parse_json(read_text(path, what, error), f"{what} {path}", error)


def load_yaml(path: str | Path, what: str = "YAML file", error: type[Exception] = InputError) -> Any:
    """The YAML document of the file ``path`` (None for an empty file)."""
    return parse_yaml(read_text(path, what, error), f"{what} {path}", error)


def iter_jsonl(path: str | Path, what: str = "JSON-lines file", error: type[Exception] = InputError) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-blank line of the text file ``path``; the caller parses each
    line with :func:`parse_json` (``where=f"{path}:{line}"``) and decides what a bad line means."""
    for i, line in enumerate(read_text(path, what, error).splitlines(), 1):
        s = line.strip()
        if s:
            yield i, s
