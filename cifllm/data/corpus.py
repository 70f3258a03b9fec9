"""The corpus: the hand-off between data preparation and every later stage.

A corpus is a folder::

    <corpus>/
      dataset/          Hugging Face ``datasets`` folder (``Dataset.save_to_disk``), one row per unique structure
      manifest.json     schema version, tokenizer fingerprint, prep config, input files with SHA-256, row counts
      report.json       rows in/out per source, drops by reason, dedup counts, token-length stats
      report.md         the same, for people
      rejects.jsonl     every dropped record: source, file, record id, reason, detail

Row schema (``CORPUS_FEATURES``):

=================  =============  ===============================================================================
column             type           meaning
=================  =============  ===============================================================================
id                 string         stable id: ``cif-`` + first 16 hex of SHA-256 of ``text``
text               string         canonical CIF text (:mod:`cifllm.cif.canonical`)
reduced_formula    string         e.g. ``SrTiO3``
elements           list[string]   sorted element symbols
n_elements         int32
n_sites            int32          sites in the written cell (conventional cell in symmetrized mode)
sg_number          int32          1-230 (1 in P1 mode)
n_tokens           int32          tokens of ``text`` (no BOS/EOS)
split              string         ``train`` / ``val``: pretraining split, hashed on reduced formula
sources            list[string]   datasets this structure came from (after deduplication)
source_ids         list[string]   ``<dataset>:<original id>`` for every merged record
properties         string         JSON object {property: value} (first value seen per property; units in registry)
year               int32 or null  earliest experimental year over the merged records (MPTS-52), else null
provenance         string         JSON list, one object per merged record: dataset, id, file, properties, year
=================  =============  ===============================================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifllm.cif.canonical import TEXT_FORMAT
from cifllm.core.inputs import InputError, load_json
from cifllm.core.records import MANIFEST_FILE
from cifllm.tokenization import TOKENIZER_VERSION, tokenizer_fingerprint
from cifllm.utils import atomic_write_json

__all__ = [
    "CORPUS_SCHEMA_VERSION",
    "CorpusRow",
    "corpus_features",
    "formula_split",
    "load_corpus",
    "load_manifest",
    "structure_id",
    "write_corpus",
]

CORPUS_SCHEMA_VERSION = 1


def structure_id(text: str) -> str:
    return "cif-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def formula_split(reduced_formula: str, val_fraction: float = 0.05, seed: int = 0) -> str:
    """Deterministic train/val split by reduced formula (all polymorphs of a formula land on the same side)."""
    h = int(hashlib.sha256(f"{seed}:{reduced_formula}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


@dataclass
class CorpusRow:
    text: str
    reduced_formula: str
    elements: list[str]
    n_sites: int
    sg_number: int
    n_tokens: int
    sources: list[str]
    source_ids: list[str]
    properties: dict[str, Any]
    year: int | None
    provenance: list[dict[str, Any]]
    split: str = "train"

    def as_record(self) -> dict[str, Any]:
        return {
            "id": structure_id(self.text),
            "text": self.text,
            "reduced_formula": self.reduced_formula,
            "elements": sorted(self.elements),
            "n_elements": len(self.elements),
            "n_sites": self.n_sites,
            "sg_number": self.sg_number,
            "n_tokens": self.n_tokens,
            "split": self.split,
            "sources": self.sources,
            "source_ids": self.source_ids,
            "properties": json.dumps(self.properties, sort_keys=True),
            "year": self.year,
            "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
        }


def corpus_features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "reduced_formula": Value("string"),
            "elements": Sequence(Value("string")),
            "n_elements": Value("int32"),
            "n_sites": Value("int32"),
            "sg_number": Value("int32"),
            "n_tokens": Value("int32"),
            "split": Value("string"),
            "sources": Sequence(Value("string")),
            "source_ids": Sequence(Value("string")),
            "properties": Value("string"),
            "year": Value("int32"),
            "provenance": Value("string"),
        }
    )


def write_corpus(rows: list[CorpusRow] | list[dict[str, Any]], out_dir: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """Write rows as a ``datasets`` folder plus ``manifest.json``; the dataset folder is swapped in atomically."""
    import os
    import shutil

    from datasets import Dataset


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [r.as_record() if isinstance(r, CorpusRow) else r for r in rows]
    if not records:
        raise ValueError(f"{out}: refusing to write an empty corpus")
    ds = Dataset.from_list(records, features=corpus_features())
    tmp = out / ".dataset.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    final = out / "dataset"
    old = out / ".dataset.old"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    man = {
        "schema_version": CORPUS_SCHEMA_VERSION,
        "tokenizer_version": TOKENIZER_VERSION,
        "text_format": TEXT_FORMAT,
        "tokenizer_fingerprint": tokenizer_fingerprint(),
        "n_rows": len(records),
        "n_train": sum(r["split"] == "train" for r in records),
        "n_val": sum(r["split"] == "val" for r in records),
        "max_tokens": max(r["n_tokens"] for r in records),
    }
    man.update(manifest or {})
    atomic_write_json(out / MANIFEST_FILE, man)
    return out


def load_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    d = Path(corpus_dir)
    if d.is_file():
        raise FileNotFoundError(f"{corpus_dir}: is a file, expected a cifllm corpus folder; build one with `cifllm data`")
    p = d / MANIFEST_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{corpus_dir}: not a cifllm corpus (no manifest.json); build one with `cifllm data`")
    man = load_json(p, "corpus manifest")
    if not isinstance(man, dict):
        raise InputError(f"corpus manifest {p}: expected a JSON object")
    return man


def load_corpus(corpus_dir: str | Path, split: str | None = None, check_tokenizer: bool = True):
    """Load a corpus as a ``datasets.Dataset`` (optionally one split), checking it was made with this tokenizer."""
    from datasets import load_from_disk


    d = Path(corpus_dir)
    man = load_manifest(d)
    if man.get("schema_version") != CORPUS_SCHEMA_VERSION:
        raise ValueError(f"{d}: corpus schema version {man.get('schema_version')} != {CORPUS_SCHEMA_VERSION}")
    if check_tokenizer and man.get("tokenizer_fingerprint") != tokenizer_fingerprint():
        raise ValueError(
            f"{d}: corpus was built for tokenizer {man.get('tokenizer_fingerprint')}, this cifllm has "
            f"{tokenizer_fingerprint()}; rebuild the corpus with `cifllm data`"
        )
    if not (d / "dataset").is_dir():
        raise FileNotFoundError(f"{d}/dataset is missing")
    ds = load_from_disk(str(d / "dataset"))
    if len(ds) == 0:
        raise ValueError(f"{d}: corpus is empty")
    if split is not None:
        ds = ds.filter(lambda s: s == split, input_columns="split")
        if len(ds) == 0:
            raise ValueError(f"{d}: corpus has no rows in split {split!r}")
    return ds
