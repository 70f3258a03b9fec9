"""Re-serialize a corpus in another canonical text format (e.g. ``cif-v2`` -> ``cif-v1``), row for row.

Used to train models that differ only in their text format on the same structures (the v1-vs-v2 pair of the
constraint-engine benchmark). Every row keeps its split, sources, properties and provenance; only ``text``, ``id``,
``n_tokens`` are recomputed (the structure, its conventional cell and space group are the same). A row that cannot be converted within the time limit is
dropped and counted by reason in ``reformat.json`` (nothing is lost silently).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifllm.cif.canonical import TEXT_FORMATS, CIFError, structure_to_text, text_to_structure
from cifllm.data.corpus import load_corpus, load_manifest, structure_id, write_corpus
from cifllm.data.registry import DataError
from cifllm.tokenization import build_tokenizer
from cifllm.utils import atomic_write_json
from cifllm.utils.limits import map_with_time_limit

__all__ = ["REFORMAT_REPORT", "ReformatResult", "reformat_corpus", "reformat_text"]

REFORMAT_REPORT = "reformat.json"


@dataclass(frozen=True)
class ReformatResult:
    out: Path
    n_in: int
    n_out: int
    dropped: dict[str, int]


def reformat_text(text: str, text_format: str, symprec: float = 0.1) -> str:
    """One canonical CIF text written in ``text_format``. ``symprec`` (Angstrom) is spglib's tolerance, as in data
    preparation. Raises :class:`CIFError`."""
    return structure_to_text(text_to_structure(text), symprec=symprec, text_format=text_format)


def _one(row: dict[str, Any], text_format: str, symprec: float) -> tuple[str, str]:
    try:
        return ("ok", reformat_text(row["text"], text_format, symprec))
    except CIFError as e:
        return ("error", e.reason)


def reformat_corpus(
    src: str | Path, out: str | Path, text_format: str = "cif-v1", workers: int = 0, time_limit_s: float = 60.0
) -> ReformatResult:
    """Write ``src`` re-serialized in ``text_format`` to ``out`` (a corpus folder, see :mod:`cifllm.data.corpus`).

    ``workers`` > 1: that many processes; ``time_limit_s``: per row (s). The manifest records the source corpus and
    the format; ``reformat.json`` the rows in/out and the drops by reason."""
    if text_format not in TEXT_FORMATS:
        raise DataError(f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise DataError(f"{out}: the output corpus must be a new folder, not the source")
    man = load_manifest(src)
    symprec = float(man.get("config", {}).get("symprec", 0.1))
    ds = load_corpus(src)
    rows = ds.to_list()
    tok = build_tokenizer()
    fn = functools.partial(_one, text_format=text_format, symprec=symprec)
    results: list[Any] = [None] * len(rows)
    for i, r in map_with_time_limit(fn, rows, time_limit_s, workers=workers, on_failure=lambda _row, reason, _d: ("error", reason)):
        results[i] = r
    kept, dropped = [], Counter()
    ok = [(row, res[1]) for row, res in zip(rows, results) if res[0] == "ok"]
    dropped.update(res[1] for res in results if res[0] == "error")
    encs = tok.encode_batch([text for _, text in ok], add_special_tokens=False)  # n_tokens excludes BOS/EOS, as in prep
    for (row, text), enc in zip(ok, encs):
        kept.append({**row, "id": structure_id(text), "text": text, "n_tokens": len(enc.ids)})
    if not kept:
        raise DataError(f"{src}: no row could be re-serialized as {text_format} ({dict(dropped)})")
    version = text_format  # the tokenizer's version is the text format it was made for (cifllm.tokenization)
    extra = {k: v for k, v in man.items() if k not in {"n_rows", "n_train", "n_val", "max_tokens", "text_format", "tokenizer_version"}}
    write_corpus(kept, out, {**extra, "text_format": text_format, "tokenizer_version": version, "reformatted_from": str(src)})
    result = ReformatResult(out, len(rows), len(kept), dict(dropped))
    atomic_write_json(out / REFORMAT_REPORT, {"source": str(src), "text_format": text_format, "n_in": len(rows), "n_out": len(kept), "dropped": dict(dropped)})
    return result

