"""The experimental downstream task of the transfer scaling law: a *measured* property (by default the
superconducting Tc of SuperCon3D, K) predicted from the crystal structure by the pretrained model plus a small
regression head.

Data, either of two instances of one format (rows ``{id, text, reduced_formula, y}`` in fixed train/val/test splits):

* **a user's file** (``file``; on the command line ``downstream=<file>`` is short for ``downstream.file=<file>``;
  :func:`load_property_file`): a CSV (``.csv``) or JSON-lines (``.jsonl`` / ``.ndjson``) table, one structure per row,
  with a column of CIF texts (``cif_column``), the measured value (column ``property``), optionally an id
  (``id_column``; else ``row<N>``) and a split (``split_column`` with ``train``/``val``/``test``; when the file has
  no such column, a split hashed on the reduced formula with ``val_fraction``/``test_fraction``, so polymorphs of a
  composition never straddle splits). Every CIF is parsed with pymatgen (at most ``cif_time_limit_s`` seconds each)
  and rewritten as canonical text, like the corpus. A bad row stops the run with one line naming the file, the row
  (the N-th data row, 1-based, header not counted) and the reason: missing column, unparsable CIF, non-numeric or
  non-finite value, unknown split, duplicate id, a negative value with ``log_target``. Rows with an empty value are
  dropped and counted (``no_<property>``), as are hydrogen-rich rows (below).
* **the project's SuperCon3D setup** (``file`` empty; :func:`load_property_set`): corpus rows that carry a record of
  one of ``sources`` (default ``supercon3d``: ICSD-derived experimental structures with measured Tc) with ``property``
  in that record. The split is the source's own fixed split (``train``/``val``/``test`` of each record's provenance:
  SuperCon3D's random 8:1:1, seed 42), the same for every pretraining size. Rows whose records disagree on the split,
  or whose H atomic fraction exceeds ``max_hydrogen_fraction`` (high-pressure hydrides such as LaH10 at 250 K; not
  ambient-pressure Tc) are dropped and counted. The target of a row is the median of its records' values.
  :func:`write_property_file` writes this set as a file of the first kind (``tests/test_scaling_downstream.py``
  checks both routes give the same rows).

Model (:func:`finetune_regressor`), and why: the whole pretrained transformer (no LM head) is fine-tuned together
with a head ``Linear(h, head_hidden) -> SiLU -> Linear(head_hidden, 1)`` on the mean-pooled last hidden state over
the CIF's tokens (``pooling=last``: the last token's state). A full fine-tune, not LoRA: the sweep's models are small
(0.14-5 M parameters), so adapters save nothing that matters on CPU, and a full fine-tune with a lower backbone
learning rate (``lr_backbone`` < ``lr_head``) is the setting of the Sim2Real scaling-law paper (Minami et al. 2025).
Skewed targets (Tc) are regressed as standardized ``log1p(y)`` with mean-squared error; AdamW, linear warm-up then
cosine decay, gradient clipping at 1. Every epoch is scored on the ``val`` split (MAE of log1p); the best epoch's
weights are kept, training stops after ``patience`` epochs without improvement, and the ``test`` split is scored
once with the kept weights. The same budget and head trained on a randomly initialised model of the same shape give
the ``n = 0`` reference (:func:`scratch_backbone`).

Metrics on the test split: ``mae`` (property units, K), ``mae_log1p`` (MAE of ``log1p(y)``, i.e. of ln(1 + Tc/K)),
``rmse_log1p``, and the predict-the-train-mean baseline (``mean_baseline_mae``, ``mean_baseline_mae_log1p``).

Composition baseline (:func:`gbt_baseline`): the bench oracle's gradient-boosted trees
(:mod:`cifllm.bench.oracle`, ``HistGradientBoostingRegressor(max_iter=400, lr=0.05)`` on log1p) fitted on the train
split, on composition features only (Magpie-style element statistics and the number of elements) and, as a second
row, on composition + cell features (the oracle's full feature set).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, ClassVar, Literal

import numpy as np

from cifllm.bench.oracle import FEATURE_NAMES, featurize
from cifllm.cif import format_formula, structure_to_text
from cifllm.cif.io import MAX_CIF_CHARS, read_cif_text
from cifllm.core.errors import CifllmError
from cifllm.data.corpus import load_corpus
from cifllm.modeling import build_model, make_config
from cifllm.tokenization import as_pretrained
from cifllm.utils import atomic_write_text
from cifllm.utils.limits import map_with_time_limit

__all__ = [
    "COMPOSITION_FEATURES",
    "DownstreamConfig",
    "DownstreamError",
    "PropertySet",
    "finetune_regressor",
    "gbt_baseline",
    "load_downstream",
    "load_property_file",
    "load_property_set",
    "scratch_backbone",
    "write_property_file",
]

#: oracle features that depend on composition only (element statistics + number of elements)
COMPOSITION_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n.split("_")[-1] in ("mean", "std", "min", "max", "range")) + ("n_elements",)
SPLITS = ("train", "val", "test")
#: split names accepted in a file's split column (case-insensitive) -> the split
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test", "testing": "test"}
#: file suffixes read as CSV / as JSON lines
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class DownstreamError(CifllmError, ValueError):
    """A downstream property file (or corpus set) that cannot be used; the message names the file, row and reason."""


@dataclass(frozen=True)
class DownstreamConfig:
    """The measured-property regression of the sweep (module docstring)."""

    #: ``downstream=<file>`` on the command line sets ``downstream.file`` (cifllm.core.config block shorthand)
    SHORTHAND: ClassVar[str] = "file"

    #: CSV or JSONL of CIF texts with a measured property (``downstream=<file>``); "" = the corpus rows of ``sources``
    file: str = ""
    cif_column: str = "cif"  #: file: column holding the CIF text
    id_column: str = "id"  #: file: column holding a row id (optional; absent = row<N>)
    split_column: str = "split"  #: file: column holding train/val/test (optional; absent = split hashed on the formula)
    val_fraction: float = 0.1  #: file without a split column: fraction of formulas in val
    test_fraction: float = 0.1  #: file without a split column: fraction of formulas in test
    split_seed: int = 42  #: file without a split column: seed of the hashed split
    cif_time_limit_s: float = 20.0  #: file: most seconds to parse and canonicalize one CIF
    sources: tuple[str, ...] = ("supercon3d",)  #: corpus sources whose records hold the measured property and its split
    property: str = "tc"  #: property key of those records, or the file's value column (Tc in K)
    unit: str = "K"  #: unit of the property (labels of the report)
    max_hydrogen_fraction: float = 0.5  #: rows with a larger H atomic fraction are dropped (high-pressure hydrides)
    log_target: bool = True  #: regress log1p(y) (skewed, non-negative targets such as Tc)
    pooling: Literal["mean", "last"] = "mean"  #: mean over the CIF's tokens, or the last token's hidden state
    head_hidden: int = 64  #: width of the head's hidden layer
    epochs: int = 15  #: most passes over the train split
    patience: int = 4  #: epochs without a better val MAE before stopping
    batch_size: int = 16  #: CIFs per batch of the regression
    lr_backbone: float = 3e-4  #: learning rate of the pretrained backbone (0 = frozen)
    lr_head: float = 2e-3  #: learning rate of the regression head
    weight_decay: float = 0.01  #: AdamW weight decay of the regression
    warmup_fraction: float = 0.05  #: share of the steps with a linear learning-rate warm-up

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("downstream sources must not be empty")
        for k in ("head_hidden", "epochs", "patience", "batch_size"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        if not (self.lr_backbone >= 0 and self.lr_head > 0):
            raise ValueError("need lr_backbone >= 0 and lr_head > 0")
        if not 0 <= self.max_hydrogen_fraction <= 1:
            raise ValueError(f"max_hydrogen_fraction must be in [0, 1], got {self.max_hydrogen_fraction}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"need 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1, got {self.val_fraction}, {self.test_fraction}")
        if not self.cif_time_limit_s > 0:
            raise ValueError(f"cif_time_limit_s must be > 0, got {self.cif_time_limit_s}")
        if not self.property.strip():
            raise ValueError("property (the value column) must not be empty")


@dataclass
class PropertySet:
    """The fixed train/val/test rows of the downstream task: each row ``{id, text, reduced_formula, y}``."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)
    target: str = "tc"  #: the property name
    origin: str = ""  #: where the rows came from (the file, or corpus + sources)

    @property
    def formulas(self) -> set[str]:
        return {r["reduced_formula"] for part in (self.train, self.val, self.test) for r in part}

    @property
    def ids(self) -> set[str]:
        return {r["id"] for part in (self.train, self.val, self.test) for r in part}

    def summary(self) -> dict[str, Any]:
        def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
            y = np.asarray([r["y"] for r in rows], float)
            return {"n": len(rows), "median": float(np.median(y)) if len(y) else None, "max": float(y.max()) if len(y) else None}

        return {"property": self.target, "origin": self.origin, **{s: stats(getattr(self, s)) for s in SPLITS}, "dropped": dict(self.dropped)}


def _hydrogen_fraction(formula: str) -> float:
    from pymatgen.core import Composition

    comp = Composition(formula)
    return float(comp.get_atomic_fraction("H")) if comp.num_atoms else 0.0


def load_property_set(corpus: str | Path, cfg: DownstreamConfig) -> PropertySet:
    """The downstream rows of ``corpus`` (module docstring); raises ``ValueError`` when a split ends up empty."""
    ds = load_corpus(corpus).select_columns(["id", "text", "reduced_formula", "sources", "provenance"])
    want = set(cfg.sources)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for rid, text, formula, sources, prov in zip(ds["id"], ds["text"], ds["reduced_formula"], ds["sources"], ds["provenance"]):
        if not want.intersection(sources):
            continue
        recs = [p for p in json.loads(prov or "[]") if p.get("dataset") in want and cfg.property in (p.get("properties") or {})]
        values = [p["properties"][cfg.property] for p in recs if isinstance(p["properties"][cfg.property], (int, float))]
        values = [float(v) for v in values if math.isfinite(float(v))]
        if not values:
            drop(f"no_{cfg.property}")
            continue
        splits = {p.get("split") for p in recs}
        if None in splits or not splits <= set(SPLITS):
            raise ValueError(
                f"{corpus}: row {rid} ({formula}): a {'/'.join(sorted(want))} record has no train/val/test split in its "
                "provenance; the downstream task needs a source with a fixed split (default: supercon3d)"
            )
        if len(splits) > 1:
            drop("split_conflict")
            continue
        if _hydrogen_fraction(formula) > cfg.max_hydrogen_fraction:
            drop("hydrogen_rich")
            continue
        out[splits.pop()].append({"id": rid, "text": text, "reduced_formula": formula, "y": float(median(values))})
    for s in SPLITS:
        if not out[s]:
            raise ValueError(f"{corpus}: the downstream task ({'/'.join(sorted(want))}, {cfg.property}) has no {s} rows")
        out[s].sort(key=lambda r: r["id"])
    return PropertySet(train=out["train"], val=out["val"], test=out["test"], dropped=dropped, target=cfg.property, origin=f"{corpus} ({'/'.join(sorted(want))})")


def load_downstream(corpus: str | Path, cfg: DownstreamConfig) -> PropertySet:
    """The downstream rows: ``cfg.file`` when set (:func:`load_property_file`), else the corpus rows of ``cfg.sources``
    (:func:`load_property_set`)."""
    return load_property_file(cfg.file, cfg) if cfg.file else load_property_set(corpus, cfg)


def write_property_file(data: PropertySet, path: str | Path) -> Path:
    """``data`` as a downstream file (JSON lines ``{id, cif, <property>, split}``), readable by :func:`load_property_file`
    with the default column names; written atomically. Returns ``path``."""
    lines = [
        json.dumps({"id": r["id"], "cif": r["text"], data.target: r["y"], "split": s})
        for s in SPLITS for r in getattr(data, s)
    ]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def _read_table(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str] | None]:
    """``([(row number, record)], CSV header or None)``; a JSONL line that is not an object is an error."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        csv.field_size_limit(max(csv.field_size_limit(), MAX_CIF_CHARS + 1))
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in (reader.fieldnames or [])]
                rows = []
                for i, rec in enumerate(reader, start=1):
                    if None in rec:
                        raise DownstreamError(f"{path}: row {i}: more fields than the header's {len(header)} columns")
                    rows.append((i, {k.strip(): v for k, v in rec.items() if k is not None}))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DownstreamError(f"{path}: not a readable CSV file ({type(exc).__name__}: {exc})") from None
        if not header:
            raise DownstreamError(f"{path}: empty CSV file (no header row)")
        return rows, header
    if suffix in JSONL_SUFFIXES:
        rows = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DownstreamError(f"{path}: not UTF-8 text ({exc})") from None
        n = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            n += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DownstreamError(f"{path}: row {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DownstreamError(f"{path}: row {n}: not a JSON object")
            rows.append((n, rec))
        return rows, None
    raise DownstreamError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use {', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)}")


def _number(v: Any) -> float | None:
    """A property value -> float; None for an empty cell / null; raises ``ValueError`` for anything else."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(repr(v))
    return float(v)


def _hashed_split(formula: str, cfg: DownstreamConfig) -> str:
    u = int.from_bytes(hashlib.sha256(f"{cfg.split_seed}:{formula}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"


def _canonical(text: str) -> tuple[str, str]:
    """(canonical text, reduced formula) of one CIF text (pymatgen parse, spglib symmetrization at 0.1 Angstrom)."""
    s = read_cif_text(text)
    return structure_to_text(s), format_formula(s.composition, reduced=True)


def load_property_file(path: str | Path, cfg: DownstreamConfig) -> PropertySet:
    """The downstream rows of a user's CSV / JSONL file (module docstring); raises :class:`DownstreamError` naming the
    file and row on the first bad row."""
    p = Path(path)
    if not p.is_file():
        raise DownstreamError(f"{p}: no such downstream file")
    records, header = _read_table(p)
    if not records:
        raise DownstreamError(f"{p}: no data rows")
    prop, cif_col, id_col, split_col = cfg.property, cfg.cif_column, cfg.id_column, cfg.split_column
    if header is not None:
        for col, what in ((cif_col, "CIF text (cif_column)"), (prop, "property values (property)")):
            if col not in header:
                raise DownstreamError(f"{p}: row 1: no column {col!r} for the {what}; columns: {', '.join(header)}")
    has_split = any(split_col in rec for _, rec in records)
    dropped: dict[str, int] = {}
    todo: list[tuple[int, str, float, str | None, str]] = []  # (row, id, y, split, cif text)
    seen: dict[str, int] = {}
    for n, rec in records:
        for col in (cif_col, prop) + ((split_col,) if has_split else ()):
            if col not in rec:
                raise DownstreamError(f"{p}: row {n}: no column {col!r}; keys: {', '.join(map(str, rec))}")
        rid = str(rec.get(id_col) or "").strip() or f"row{n}"
        if rid in seen:
            raise DownstreamError(f"{p}: row {n}: id {rid!r} repeats row {seen[rid]}")
        seen[rid] = n
        try:
            y = _number(rec[prop])
        except ValueError:
            raise DownstreamError(f"{p}: row {n} (id {rid}): {prop} = {str(rec[prop])[:40]!r} is not a number") from None
        if y is None:
            dropped[f"no_{prop}"] = dropped.get(f"no_{prop}", 0) + 1
            continue
        if not math.isfinite(y):
            raise DownstreamError(f"{p}: row {n} (id {rid}): {prop} = {rec[prop]!r} is not finite")
        if cfg.log_target and y < 0:
            raise DownstreamError(f"{p}: row {n} (id {rid}): {prop} = {y:g} is negative, log_target needs values >= 0; set downstream.log_target=false")
        split = None
        if has_split:
            split = SPLIT_ALIASES.get(str(rec[split_col]).strip().lower())
            if split is None:
                raise DownstreamError(f"{p}: row {n} (id {rid}): {split_col} = {str(rec[split_col])[:40]!r} is not one of train/val/test")
        text = rec[cif_col]
        if not isinstance(text, str):
            raise DownstreamError(f"{p}: row {n} (id {rid}): {cif_col} is not a CIF text ({type(text).__name__})")
        todo.append((n, rid, y, split, text))

    def failed(item: str, reason: str, detail: str) -> tuple[str, str]:
        return "", " ".join(f"{reason}: {detail}".replace("<string>: ", "").split())  # one line

    texts = [t[4] for t in todo]
    parsed = dict(map_with_time_limit(_canonical, texts, cfg.cif_time_limit_s, workers=0, on_failure=failed))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for i, (n, rid, y, split, _) in enumerate(todo):
        text, formula = parsed[i]
        if not text:
            raise DownstreamError(f"{p}: row {n} (id {rid}): unparsable CIF ({formula[:240]})")
        if _hydrogen_fraction(formula) > cfg.max_hydrogen_fraction:
            dropped["hydrogen_rich"] = dropped.get("hydrogen_rich", 0) + 1
            continue
        out[split or _hashed_split(formula, cfg)].append({"id": rid, "text": text, "reduced_formula": formula, "y": y})
    for s in SPLITS:
        if not out[s]:
            how = f"column {split_col!r}" if has_split else f"a split hashed on the formula (val_fraction {cfg.val_fraction}, test_fraction {cfg.test_fraction})"
            raise DownstreamError(f"{p}: no {s} rows after reading {len(records)} rows with {how}; dropped {json.dumps(dropped)}")
        out[s].sort(key=lambda r: r["id"])
    return PropertySet(train=out["train"], val=out["val"], test=out["test"], dropped=dropped, target=prop, origin=str(p))


# ------------------------------------------------------------------------------------------------ neural regressor


def scratch_backbone(preset: str, max_position_embeddings: int, seed: int):
    """A randomly initialised model of ``preset`` (the built-in tokenizer's vocabulary) and that tokenizer: the
    ``n = 0`` reference of the sweep. Returns ``(model, tokenizer)``."""
    tok = as_pretrained()
    cfg = make_config(
        preset, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=max_position_embeddings,
    )
    return build_model(cfg, seed=seed), tok


def _encode(tok: Any, texts: list[str], limit: int) -> list[list[int]]:
    enc = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    seqs = [[tok.bos_token_id, *e.ids, tok.eos_token_id] for e in enc]
    long = sum(len(s) > limit for s in seqs)
    if long:
        raise ValueError(f"{long} downstream CIFs are longer than the model's context ({limit} tokens); raise max_position_embeddings")
    return seqs


def _batches(seqs: list[list[int]], order: list[int], batch_size: int, pad: int):
    import torch

    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[j, : len(seqs[i])] = 1
        yield idx, ids, mask


def _grouped_order(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[int]:
    """A random order whose batches hold CIFs of similar length (mega-batches of 8 batches sorted by length)."""
    perm = rng.permutation(len(lengths)).tolist()
    mega = 8 * batch_size
    chunks = [sorted(perm[i : i + mega], key=lambda k: lengths[k]) for i in range(0, len(perm), mega)]
    batches = [c[i : i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
    return [k for b in (batches[i] for i in rng.permutation(len(batches))) for k in b]


def finetune_regressor(
    model: Any, tok: Any, data: PropertySet, cfg: DownstreamConfig, seed: int = 0, threads: int = 0
) -> dict[str, Any]:
    """Fine-tune ``model`` (a ``*ForCausalLM``; its LM head is not used) with a regression head on ``data.train``,
    keep the epoch with the best val MAE, score ``data.test``. Returns the metrics (module docstring) plus
    ``best_epoch``, ``epochs_run``, ``val_mae_fit_space`` (best val MAE of the regressed quantity), ``train_s`` and the split sizes."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    backbone.train()
    hidden = int(model.config.hidden_size)
    head = torch.nn.Sequential(torch.nn.Linear(hidden, cfg.head_hidden), torch.nn.SiLU(), torch.nn.Linear(cfg.head_hidden, 1))
    limit = int(model.config.max_position_embeddings)
    seqs = {s: _encode(tok, [r["text"] for r in getattr(data, s)], limit) for s in SPLITS}
    y = {s: np.asarray([r["y"] for r in getattr(data, s)], float) for s in SPLITS}

    def t(v: np.ndarray) -> np.ndarray:
        return np.log1p(np.clip(v, 0, None)) if cfg.log_target else v

    def inv(v: np.ndarray) -> np.ndarray:
        return np.clip(np.expm1(v), 0, None) if cfg.log_target else v

    mu, sd = float(t(y["train"]).mean()), float(t(y["train"]).std()) or 1.0
    target = torch.tensor((t(y["train"]) - mu) / sd, dtype=torch.float32)

    def forward(ids: Any, mask: Any) -> Any:
        h = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        if cfg.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1)
        else:
            pooled = h[torch.arange(h.size(0)), mask.sum(1) - 1]
        return head(pooled).squeeze(-1)

    def predict(split: str) -> np.ndarray:
        backbone.eval()
        head.eval()
        out = np.zeros(len(seqs[split]))
        order = sorted(range(len(seqs[split])), key=lambda i: len(seqs[split][i]))
        with torch.no_grad():
            for idx, ids, mask in _batches(seqs[split], order, 64, tok.pad_token_id):
                out[idx] = forward(ids, mask).numpy() * sd + mu
        backbone.train()
        head.train()
        return out

    groups = [{"params": list(head.parameters()), "lr": cfg.lr_head, "weight_decay": 0.0}]
    if cfg.lr_backbone > 0:
        groups.append({"params": list(backbone.parameters()), "lr": cfg.lr_backbone, "weight_decay": cfg.weight_decay})
    else:
        backbone.requires_grad_(False)
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(seqs["train"]) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, round(cfg.warmup_fraction * total))

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    lengths = [len(s) for s in seqs["train"]]
    best, best_epoch, best_state, epochs_run, since = math.inf, -1, None, 0, 0
    curve = []
    t0 = time.time()
    params = [p for g in groups for p in g["params"]]
    for epoch in range(cfg.epochs):
        order = _grouped_order(lengths, cfg.batch_size, rng)
        for idx, ids, mask in _batches(seqs["train"], order, cfg.batch_size, tok.pad_token_id):
            loss = torch.nn.functional.mse_loss(forward(ids, mask), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        epochs_run = epoch + 1
        val = float(np.mean(np.abs(predict("val") - t(y["val"]))))
        curve.append(round(val, 5))
        if val < best - 1e-9:
            best, best_epoch, since = val, epoch + 1, 0
            best_state = ({k: v.detach().clone() for k, v in backbone.state_dict().items()}, {k: v.detach().clone() for k, v in head.state_dict().items()})
        else:
            since += 1
            if since >= cfg.patience:
                break
    if best_state is not None:
        backbone.load_state_dict(best_state[0])
        head.load_state_dict(best_state[1])
    pred_t = predict("test")
    yt = y["test"]
    pred = inv(pred_t)
    log_true, log_pred = np.log1p(np.clip(yt, 0, None)), np.log1p(np.clip(pred, 0, None))
    mean_pred = inv(np.full(len(yt), mu))
    return {
        "mae": float(np.mean(np.abs(pred - yt))),
        "mae_log1p": float(np.mean(np.abs(log_pred - log_true))),
        "rmse_log1p": float(np.sqrt(np.mean((log_pred - log_true) ** 2))),
        "mean_baseline_mae": float(np.mean(np.abs(mean_pred - yt))),
        "mean_baseline_mae_log1p": float(np.mean(np.abs(np.log1p(mean_pred) - log_true))),
        "val_mae_fit_space": best,
        "val_curve": curve,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_s": round(time.time() - t0, 1),
        "n_train": len(y["train"]),
        "n_val": len(y["val"]),
        "n_test": len(yt),
    }


# ------------------------------------------------------------------------------------------------ GBT baselines


def gbt_baseline(data: PropertySet, features: Literal["composition", "oracle"] = "composition", log_target: bool = True, seed: int = 0) -> dict[str, Any]:
    """The bench oracle's regressor on the train split, scored on the test split (``mae``, ``mae_log1p``);
    ``features``: composition only (:data:`COMPOSITION_FEATURES`) or the oracle's full set (composition + cell)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    cols = [FEATURE_NAMES.index(n) for n in (COMPOSITION_FEATURES if features == "composition" else FEATURE_NAMES)]
    t0 = time.time()
    x_tr = np.stack([featurize(r["text"])[cols] for r in data.train])
    x_te = np.stack([featurize(r["text"])[cols] for r in data.test])
    y_tr = np.asarray([r["y"] for r in data.train], float)
    y_te = np.asarray([r["y"] for r in data.test], float)
    model = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, random_state=seed)
    model.fit(x_tr, np.log1p(np.clip(y_tr, 0, None)) if log_target else y_tr)
    p = model.predict(x_te)
    pred = np.clip(np.expm1(p), 0, None) if log_target else p
    return {
        "mae": float(np.mean(np.abs(pred - y_te))),
        "mae_log1p": float(np.mean(np.abs(np.log1p(np.clip(pred, 0, None)) - np.log1p(np.clip(y_te, 0, None))))),
        "features": features,
        "n_features": len(cols),
        "n_train": len(y_tr),
        "n_test": len(y_te),
        "train_s": round(time.time() - t0, 1),
        "model": "sklearn HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05) (cifllm.bench.oracle)",
    }
