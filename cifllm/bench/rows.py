"""Resumable benchmark rows: each (task, row) result is saved as soon as it exists, so a rerun with the same settings
loads it instead of sampling it again.

Files (all written atomically):

* ``<out>/<task>/rows/<row>.samples.jsonl`` - one record per sample: ``kind`` (``csp`` / ``denovo``),
  ``prompt_index`` (CSP prompt; de novo: index of the asked value, else None), ``sample_index``, ``text`` (what the
  checks read), ``n_tokens`` (None for the template baseline), ``asked`` (conditioned de novo: the asked property
  value); after scoring also the verdict summary (``valid``, ``reason``, ``reduced_formula``, ``n_sites``,
  ``n_elements``, ``unique``, ``novel``; CSP: ``rms``).
  Read from ``<row>.samples.jsonl.gz`` when the plain file is missing (a results folder archived with gzip).
* ``<out>/<task>/rows/<row>.json`` - ``status`` ``generated`` (samples saved, not scored yet) or ``scored`` (the whole
  row), the generation ``fingerprint`` (model path + SHA-256 of its config/weights, adapter, constraint engine,
  budgets, sampling parameters, seed, engine, split files) and, once scored, the ``score_fingerprint`` (reference
  corpus, time limit, stability). Same generation fingerprint: the samples are reused; same score fingerprint too:
  the row is loaded as it is (its samples file is then not needed).
* ``<out>/<task>/rows/<row>.partial.jsonl`` - while a row is being sampled: its generation fingerprint (first line),
  then one line per sample as the engine yields it (:class:`RowJournal`). A rerun with the same fingerprint samples
  only the prompts whose samples are not all there (same seeds as an uninterrupted run); deleted once the row's
  samples are saved.
* ``<out>/_shared/denovo-<hash>.jsonl`` (+ ``.json``, written last: the completion mark) - the unprompted (BOS-only)
  de novo samples of a model without an adapter, keyed by model, constraint engine, sampling parameters, count and
  seed: identical for every task, so sampled once and reused by every task (scored per task).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifllm.utils import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["OWN_ROWS", "RESERVED_ROWS", "ROW_FORMAT", "RowJournal", "RowStore", "SharedDenovo", "describe_change", "digest", "folder_fingerprint"]

#: rows of a task's benchmark that sample the benchmarked model itself (with or without its adapter / conditioning)
OWN_ROWS = ("base", "base-unconstrained", "lora", "lora+cond", "rl", "best-of-n")
#: row names the runner gives itself; ``compare_models`` names must differ from them
RESERVED_ROWS = (*OWN_ROWS, "template")
#: version of the row files: a row saved by another version is regenerated
ROW_FORMAT = 1
#: files that define a model or adapter folder's outputs (hashed into its fingerprint)
_DEFINING = ("config.json", "cifllm_tokenizer.json", "tokenizer.json", "generation_config.json", "adapter_config.json", "cifllm_adapter.json")
_WEIGHTS = ("*.safetensors", "*.bin")
_FP_CACHE: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def digest(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` characters) of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def folder_fingerprint(path: str | Path) -> str:
    """SHA-256 over a model or adapter folder's config, tokenizer and weight files (name + content); cached per
    process by (path, file sizes and modification times)."""
    p = Path(path)
    files = sorted({f for pat in (*_DEFINING, *_WEIGHTS) for f in p.glob(pat) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{p}: no model or adapter files to fingerprint")
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(p.resolve()), stamp)
    if key not in _FP_CACHE:
        _FP_CACHE[key] = digest({f.name: sha256_file(f) for f in files}, 64)
    return _FP_CACHE[key]


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """The keys whose values differ, ``key old -> new`` (values shortened), for a one-line log."""
    if not old:
        return "no fingerprint saved"
    keys = sorted(set(old) | set(new), key=str)
    parts = [f"{k} {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(parts) or "no difference"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 24 else s[:10] + "..." + s[-8:]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of ``path``, or of its gzipped copy ``path.gz`` when ``path`` is missing (an archived results folder)."""
    gz = path.with_name(path.name + ".gz")
    text = gzip.decompress(gz.read_bytes()).decode() if not path.exists() and gz.exists() else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in records)


class RowStore:
    """The saved rows of one task (``<task_dir>/rows``)."""

    def __init__(self, task_dir: str | Path) -> None:
        self.dir = Path(task_dir) / "rows"

    def row_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def samples_path(self, name: str) -> Path:
        return self.dir / f"{name}.samples.jsonl"

    def journal(self, name: str, fingerprint: dict[str, Any], log: Callable[[str], None]) -> RowJournal:
        """The journal of row ``name`` while it is sampled (see :class:`RowJournal`)."""
        return RowJournal(self.dir / f"{name}.partial.jsonl", fingerprint, log)

    def read(self, name: str) -> dict[str, Any] | None:
        """The saved row record, or None (missing or unreadable)."""
        try:
            rec = json.loads(self.row_path(name).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def read_samples(self, name: str) -> list[dict[str, Any]] | None:
        try:
            return _read_jsonl(self.samples_path(name))
        except (OSError, ValueError):
            return None

    def save_generated(self, name: str, fingerprint: dict[str, Any], samples: list[dict[str, Any]], sampling: dict[str, Any]) -> None:
        """Samples first, then the record that points at them (a kill in between leaves the old record, which no
        longer matches or is regenerated), then the row's journal is removed."""
        atomic_write_text(self.samples_path(name), _jsonl(samples))
        atomic_write_json(self.row_path(name), {"generator": name, "status": "generated", "format": ROW_FORMAT, "fingerprint": fingerprint, "sampling": sampling})
        (self.dir / f"{name}.partial.jsonl").unlink(missing_ok=True)

    def save_scored(self, name: str, row: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        atomic_write_text(self.samples_path(name), _jsonl(samples))
        atomic_write_json(self.row_path(name), {**row, "status": "scored", "format": ROW_FORMAT})

    def lookup(self, name: str, fingerprint: dict[str, Any], score_fingerprint: dict[str, Any] | None, log: Callable[[str], None]) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]] | None]:
        """What can be reused of row ``name``: ``("scored", row, samples)`` (same generation and scoring settings;
        samples None when their file is gone),
        ``("generated", record, samples)`` (same generation settings: score the saved samples) or ``("none", None,
        None)``; a saved row with other settings is reported in one line through ``log``."""
        rec = self.read(name)
        if rec is None:
            return "none", None, None
        if rec.get("format") != ROW_FORMAT or rec.get("fingerprint") != fingerprint:
            why = f"row format {rec.get('format')} -> {ROW_FORMAT}" if rec.get("format") != ROW_FORMAT else describe_change(rec.get("fingerprint"), fingerprint)
            log(f"row {name}: saved with other settings ({why}): regenerating")
            return "none", None, None
        samples = self.read_samples(name)
        if rec.get("status") == "scored" and score_fingerprint is not None and rec.get("score_fingerprint") == score_fingerprint:
            return "scored", rec, samples  # the record is the whole row: its samples are kept for audit, not needed
        if samples is None:
            log(f"row {name}: {self.samples_path(name)} missing or unreadable: regenerating")
            return "none", None, None
        if rec.get("status") == "scored" and score_fingerprint is not None:
            log(f"row {name}: scoring settings changed ({describe_change(rec.get('score_fingerprint'), score_fingerprint)}): rescoring the saved samples")
        return "generated", rec, samples


class RowJournal:
    """Append-only log of one row's samples while it is sampled, so a killed run loses at most the prompt batch in
    flight. Line 1: ``{"fingerprint": ...}`` (the row's generation fingerprint); then one record per sample: ``part``
    (``csp`` / ``denovo``), ``prompt_index`` (in that part's prompt list), ``sample_index``, ``text``, ``n_tokens``,
    ``error``, ``time_s`` (the sample's share of its batch's wall seconds). Each line is flushed as written; a torn last
    line (killed mid-write) and any line that does not parse are dropped on reading. A journal with another fingerprint
    is discarded (logged)."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], log: Callable[[str], None]) -> None:
        self.path, self.fingerprint, self.log = path, fingerprint, log
        self.records: list[dict[str, Any]] = []
        fresh = True
        if path.exists():
            text = path.read_text(errors="replace")
            lines = text.splitlines()
            head = _parse(lines[0]) if lines else None
            if head is not None and head.get("fingerprint") == fingerprint:
                self.records = [r for r in map(_parse, lines[1:]) if r is not None and {"part", "prompt_index", "sample_index"} <= set(r)]
                fresh = False
                log(f"{path.name}: resuming with {len(self.records)} samples already sampled")
            else:
                log(f"{path.name}: saved with other settings ({describe_change((head or {}).get('fingerprint'), fingerprint)}): discarded")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            with path.open("w") as f:
                f.write(json.dumps({"fingerprint": fingerprint}, default=str) + "\n")
        elif not text.endswith("\n"):
            with path.open("a") as f:  # end a torn last line so the next record starts on its own line
                f.write("\n")
        self._f = path.open("a")

    def done(self, part: str, counts: list[int]) -> dict[int, list[dict[str, Any]]]:
        """Per prompt of ``part`` whose ``counts[i]`` samples (indices 0..counts[i]-1) are all logged: its records."""
        by: dict[int, dict[int, dict[str, Any]]] = {}
        for r in self.records:
            if r["part"] == part and 0 <= int(r["prompt_index"]) < len(counts):
                by.setdefault(int(r["prompt_index"]), {})[int(r["sample_index"])] = r
        return {i: [x[k] for k in range(counts[i])] for i, x in by.items() if all(k in x for k in range(counts[i]))}

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r if isinstance(r, dict) else None


class SharedDenovo:
    """Unprompted de novo samples shared by every task (``<out>/_shared``), keyed by a fingerprint dict."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / "_shared"

    def paths(self, key: dict[str, Any]) -> tuple[Path, Path]:
        h = digest(key)
        return self.dir / f"denovo-{h}.jsonl", self.dir / f"denovo-{h}.json"

    def get(self, key: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """(samples, meta) when a complete entry with exactly this key exists, else None."""
        data, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            samples = _read_jsonl(data)
        except (OSError, ValueError):
            return None
        if len(samples) != meta.get("n_samples"):
            return None
        return samples, meta

    def put(self, key: dict[str, Any], samples: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
        data, meta_path = self.paths(key)
        atomic_write_text(data, _jsonl(samples))
        atomic_write_json(meta_path, {**meta, "key": key, "n_samples": len(samples)})
        return data
