"""Stability of sampled crystals with a shipped universal interatomic potential (:mod:`cifllm.potentials`; CHGNet by
default): relaxation, energy above the convex hull, stable / metastable / S.U.N. / M.S.U.N. rates. Needs the
potential's extra (``pip install 'cifllm[mlip]'`` for CHGNet, ``'cifllm[mlip7]'`` for SevenNet).

Potential. The potential layer (:mod:`cifllm.potentials`) loads only checkpoints shipped in the backend's wheel
(CHGNet: ``0.3.0``, ``0.2.0``, ``r2scan``; SevenNet: ``7net-0``, ...), never a path or a URL; nothing is downloaded.
CHGNet 0.3.0 is trained on MPtrj energies that carry the MP2020 compatibility corrections.

Relaxation (:func:`relax_structure`, :func:`cifllm.potentials.relax_with`). The structure (primitive cell by default)
relaxes with ASE ``FIRE`` (or ``BFGS``) on the potential's ASE calculator, cell and positions together (``FrechetCellFilter``), until every force is below
``fmax`` (eV/A; the filter applies the same threshold to stress x volume) or ``max_steps`` optimizer steps have run.
Recorded: energy per atom before and after (eV/atom), steps, converged, the largest final force (eV/A), the relaxed
structure (CIF), the RMS displacement between generated and relaxed structure (``rmsd_A``: site-by-site, fractional
displacement wrapped to the nearest image, mean translation removed, in the relaxed lattice, A - MatterGen's
distance to the local minimum; the cell change is reported as ``volume_ratio``) and ``rms_matcher``, the
``StructureMatcher`` (ltol 0.2, stol 0.3, angle 5) normalized RMS of generated vs relaxed (null: the relaxed
structure no longer matches the generated one; a supercell match counts, so a distorted cell that relaxed back to a
higher-symmetry one with a smaller primitive cell still matches). The per-structure time limit and the worker processes are those of
:func:`cifllm.evaluation.limits.map_with_time_limit`; each worker loads the model once.

Verdict reasons (every sample gets one when it could not be evaluated): ``not_valid`` (failed the validity checks:
not relaxed), ``parse_error``, ``unsupported_element`` (outside the potential's elements: Z > 94 for CHGNet), ``too_many_atoms`` (>
``max_atoms`` in the relaxed cell), ``isolated_atom`` (an atom with no neighbour within CHGNet's 6 A graph cutoff),
``exploding_energy`` (a non-finite energy or |E| > ``max_abs_energy_per_atom`` at any step, or atoms closer than
``min_distance`` A after relaxation), ``unphysical_cell`` (volume changed by more than ``max_volume_ratio`` either
way), ``not_converged`` (step limit reached; the energy is recorded, E_hull is not), ``timeout``, ``worker_crash``,
``error``; on the hull side ``no_reference`` (no reference corpus) and ``no_elemental_reference`` (the reference
corpus has no relaxed pure phase of one of the sample's elements: the hull cannot be built; never with ``hull=dft``).

Hull (:func:`hull_energy`). For a sample with elements E the references are every reference-corpus structure whose
element set is a non-empty subset of E (elemental phases included), at most ``max_refs_per_system`` per exact
element set (fewest atoms first), relaxed with the same potential and settings; a reference that does not converge or
fails is left out (counted). pymatgen ``PhaseDiagram`` of those entries gives the sample's energy above the hull
(``allow_negative``: below the hull of the known phases is negative). Reference energies are cached per exact
chemical system (``hull/<potential>/<Cl-Na>.json``, keyed by the SHA-256 of each reference text), so a system shared by
many samples and by later runs is relaxed once.

DFT hull (``hull=dft``, :class:`cifllm.potentials.hull.DftHull`): the competing phases are the DFT formation
energies of the data's MP rows (the reference corpus rows that carry one, else the registry's MP-20/MPTS-52 files
under ``$CIFLLM_DATA_DIR``), every element at 0; the sample's formation energy is its relaxed potential energy minus
the potential's shipped elemental reference energies (:class:`cifllm.potentials.hull.HullScorer`). No reference is
relaxed.

Caveats (also in ``metrics.json``): a potential's hull is not DFT's (CHGNet's energy error is tens of meV/atom and it
tends to soften, so E_hull <= 0 is "on CHGNet's hull of the reference phases", not a DFT claim); a chemical system with
few references (``hull_n_references``) gives a weak hull that overstates stability; the reference corpus is what the
hull knows - phases missing from it cannot make a sample unstable.

Cache (:class:`StabilityCache`): ``relax.jsonl`` holds one record per (sample id, text SHA-256, potential, relaxation
settings); a rerun reads it and relaxes nothing again (timeouts and worker crashes are not cached: they are retried).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifllm.cif import parse_canonical, text_to_structure
from cifllm.core.report import pct, wilson_interval
from cifllm.data.corpus import load_corpus
from cifllm.evaluation.limits import map_with_time_limit
from cifllm.potentials import (
    BACKENDS,
    DEFAULT_POTENTIAL,
    MissingExtraError,
    RelaxSettings,
    UnknownPotentialError,
    get_potential,
    relax_with,
    site_rmsd,
)
from cifllm.potentials import failure_record as _fail
from cifllm.potentials.hull import DftHull, HullScorer
from cifllm.utils import atomic_write_json, atomic_write_text

__all__ = [
    "POTENTIAL_MODELS",
    "DftHull",
    "HullReference",
    "MissingExtraError",
    "RelaxTask",
    "StabilityCache",
    "StabilitySettings",
    "hull_energy",
    "potential_key",
    "prepare_hull",
    "relax_structure",
    "run_stability",
    "site_rmsd",
    "stability_plots",
    "stability_stage",
    "summarize_stability",
    "wilson_interval",
]

#: CHGNet checkpoints shipped in the chgnet wheel (name -> checkpoint under the package; the default backend's).
POTENTIAL_MODELS: dict[str, str] = dict(BACKENDS[DEFAULT_POTENTIAL].models)

#: Reasons that are not cached (a rerun tries again: they depend on load, not on the structure).
TRANSIENT_REASONS = frozenset({"timeout", "worker_crash"})

CAVEATS: tuple[str, ...] = (
    "E_hull is the potential's (CHGNet by default: MPtrj energies, which carry the MP2020 corrections) against the "
    "reference corpus relaxed with the same potential, not a DFT hull: E_hull <= 0 means on the potential's hull of "
    "the known phases (hull=dft: on the DFT formation energies of the data's MP phases, the candidate's own energy "
    "still the potential's).",
    "A chemical system with few references (hull_n_references) gives a weak hull that overstates stability; phases "
    "missing from the reference corpus cannot make a sample unstable.",
    "Samples that do not converge within max_steps, time out or fail have no E_hull (null) and count as not stable in "
    "rates over all samples; rates among measured samples are given too.",
)


@dataclass(frozen=True)
class StabilitySettings:
    """Relaxation and hull settings. Forces in eV/A, energies in eV/atom, times in s.

    ``potential``: a backend of :mod:`cifllm.potentials` (``chgnet``, ``sevennet``). ``model``: one of its checkpoints
    shipped in its wheel (empty: the backend's default, ``0.3.0`` for CHGNet). ``optimizer``: ASE ``FIRE`` or
    ``BFGS``. ``fmax``/``max_steps``: convergence threshold and step limit. ``primitive``: relax the primitive cell
    (energy per atom is the same, fewer atoms). ``time_limit_s``: per structure (soft + hard limit of
    :func:`map_with_time_limit`). ``workers``: processes (0 = in this process), each loads the model once.
    ``hull``: ``reference`` (the reference corpus relaxed with the potential) or ``dft`` (the DFT-anchored hull of
    :mod:`cifllm.potentials.hull`: no reference relaxations, elements always present).
    ``stable_threshold``/``metastable_threshold``: E_hull bounds of "stable" and "metastable".
    """

    model: str = ""
    optimizer: str = "FIRE"
    fmax: float = 0.1
    max_steps: int = 500
    relax_cell: bool = True
    primitive: bool = True
    max_atoms: int = 200
    max_abs_energy_per_atom: float = 30.0
    min_distance: float = 0.5
    max_volume_ratio: float = 4.0
    time_limit_s: float = 300.0
    workers: int = 0
    threads: int = 1
    max_refs_per_system: int = 50
    stable_threshold: float = 0.0
    metastable_threshold: float = 0.1
    potential: str = DEFAULT_POTENTIAL
    hull: str = "reference"

    def __post_init__(self) -> None:
        if self.potential not in BACKENDS:
            raise ValueError(f"stability potential must be one of {sorted(BACKENDS)}, got {self.potential!r}")
        backend = BACKENDS[self.potential]
        if not self.model:
            object.__setattr__(self, "model", backend.default_model)
        if self.model not in backend.models:
            raise ValueError(f"stability model must be one of {sorted(backend.models)} (checkpoints shipped in the {backend.package} wheel), got {self.model!r}")
        if self.hull not in ("reference", "dft"):
            raise ValueError(f"stability hull must be 'reference' or 'dft', got {self.hull!r}")
        self.relax_settings()  # optimizer, fmax, max_steps

    def relax_settings(self) -> RelaxSettings:
        """The relaxation part (:class:`cifllm.potentials.RelaxSettings`)."""
        return RelaxSettings(**{k: getattr(self, k) for k in RelaxSettings.__dataclass_fields__})

    def relax_key(self) -> str:
        """The settings that change a relaxation's result (not time limits or workers)."""
        return self.relax_settings().key()

    @classmethod
    def from_config(cls, cfg: Any, workers: int) -> StabilitySettings:
        """From the ``stability_*`` keys of an :class:`~cifllm.evaluation.run.EvalConfig` (or BenchConfig);
        ``stability_workers`` < 0 means ``workers``."""
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            v = getattr(cfg, f"stability_{name}", None)
            if v is not None:
                kw[name] = v
        if kw.get("workers", -1) < 0:
            kw["workers"] = workers
        return cls(**kw)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def potential_key(model: str = "", potential: str = DEFAULT_POTENTIAL) -> str:
    """``<backend>-<package version>/<model>/<checkpoint file>`` (:attr:`cifllm.potentials.Potential.key`), read
    from the installed package without loading torch. Raises :class:`MissingExtraError` when the backend's extra is
    not installed, ``ValueError`` for a model it does not ship."""
    if potential not in BACKENDS:
        raise ValueError(f"stability potential must be one of {sorted(BACKENDS)}, got {potential!r}")
    try:
        return BACKENDS[potential](model or None).key
    except UnknownPotentialError as exc:
        raise ValueError(f"stability {exc}") from None


def _potential(settings: StabilitySettings) -> Any:
    """This process's potential of ``settings`` (loaded once per process)."""
    return get_potential(settings.potential, settings.model, settings.threads)


def _calculator(settings: StabilitySettings) -> Any:
    """The ASE calculator of this process's potential (loaded once, from the installed package only)."""
    return _potential(settings).calculator()


def relax_structure(structure: Any, settings: StabilitySettings = StabilitySettings()) -> dict[str, Any]:
    """Relax one pymatgen ``Structure`` with the settings' potential in this process
    (:func:`cifllm.potentials.relax_with`); ``ok`` is True when the relaxation converged and passed every sanity
    check; otherwise ``reason`` says why."""
    return relax_with(_potential(settings), structure, settings.relax_settings())


class RelaxTask:
    """Picklable callable for :func:`map_with_time_limit`: canonical text -> relaxation record (model loaded once
    per process, on the first call)."""

    def __init__(self, settings: StabilitySettings) -> None:
        self.settings = settings

    def __call__(self, text: str) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = text_to_structure(text)
        except Exception as exc:
            return _fail("parse_error", f"{type(exc).__name__}: {exc}")
        return relax_structure(s, self.settings)


def _chemsys(elements: Iterable[str]) -> str:
    return "-".join(sorted(set(elements)))


class StabilityCache:
    """Relaxation records (``relax.jsonl``, last record per key wins) and per-system reference energies
    (``hull/<potential>/<system>.json``) under one folder. Only the calling process writes."""

    def __init__(self, folder: str | Path, potential: str, settings: StabilitySettings) -> None:
        self.folder = Path(folder)
        self.potential = potential
        self.settings_key = settings.relax_key()
        self.hull_dir = self.folder / "hull" / _sha(potential + "\n" + self.settings_key)[:16]
        self.records: dict[str, dict[str, Any]] = {}
        p = self.folder / "relax.jsonl"
        if p.is_file():
            for line in p.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError):
                    r = json.loads(line)
                    self.records[r["key"]] = r["record"]

    def key(self, sample_id: str, text: str) -> str:
        return _sha(f"{sample_id}\n{_sha(text)}\n{self.potential}\n{self.settings_key}")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Append records (transient failures are not stored)."""
        keep = [(k, r) for k, r in items if r.get("reason") not in TRANSIENT_REASONS]
        if not keep:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "relax.jsonl", "a", encoding="utf-8") as f:
            for k, r in keep:
                f.write(json.dumps({"key": k, "record": r}) + "\n")
                self.records[k] = r
            f.flush()

    def system(self, chemsys: str) -> dict[str, dict[str, Any]]:
        """Reference energies of one exact chemical system: text SHA-256 -> entry."""
        p = self.hull_dir / f"{chemsys}.json"
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            return {}
        return data.get("entries", {}) if data.get("potential") == self.potential else {}

    def put_system(self, chemsys: str, entries: dict[str, dict[str, Any]]) -> None:
        atomic_write_json(self.hull_dir / f"{chemsys}.json", {"potential": self.potential, "settings": json.loads(self.settings_key), "chemsys": chemsys, "entries": entries})


@dataclass
class HullReference:
    """Reference structures (canonical texts) grouped by exact chemical system (``"Cl-Na"``), fewest atoms first."""

    systems: dict[str, list[tuple[str, str]]]  # chemsys -> [(id, text)]

    @classmethod
    def from_records(cls, ids: Sequence[str], texts: Sequence[str], formulas: Sequence[str]) -> HullReference:
        from pymatgen.core import Composition

        rows: dict[str, list[tuple[float, str, str]]] = {}
        cache: dict[str, tuple[str, float]] = {}
        for i, t, f in zip(ids, texts, formulas, strict=True):
            if f not in cache:
                c = Composition(f)
                cache[f] = (_chemsys(e.symbol for e in c.elements), c.num_atoms)
            sysname, _ = cache[f]
            rows.setdefault(sysname, []).append((_cell_atoms(t), str(i), t))
        return cls({k: [(i, t) for _, i, t in sorted(v)] for k, v in rows.items()})

    @classmethod
    def from_index(cls, ref: Any) -> HullReference:
        """From a :class:`~cifllm.evaluation.matching.ReferenceIndex` (its reduced-formula buckets)."""
        formulas = [""] * len(ref.texts)
        for f, members in ref.buckets.items():
            for i in members:
                formulas[i] = f
        return cls.from_records(ref.ids, ref.texts, formulas)

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path, split: str | None = None) -> HullReference:
        ds = load_corpus(corpus_dir, split=split).select_columns(["id", "text", "reduced_formula"])
        return cls.from_records(ds["id"], ds["text"], ds["reduced_formula"])

    def subsystems(self, elements: Sequence[str]) -> list[str]:
        """Exact chemical systems of the reference that are non-empty subsets of ``elements``."""
        els = sorted(set(elements))
        out = []
        for r in range(1, len(els) + 1):
            for combo in itertools.combinations(els, r):
                k = "-".join(combo)
                if k in self.systems:
                    out.append(k)
        return out


def _cell_atoms(text: str) -> float:
    """Atoms in the written cell, from the ``data_`` formula (no structure parse)."""
    import re

    head = text.split("\n", 1)[0]
    return float(sum(float(x) if x else 1.0 for x in re.findall(r"[A-Z][a-z]?(\d*\.?\d*)", head[5:])))


def hull_energy(elements: Sequence[str], formula_counts: dict[str, float], energy_per_atom: float, entries: Sequence[tuple[dict[str, float], float]]) -> dict[str, Any]:
    """Energy above the hull (eV/atom, negative below it) of one composition against reference entries
    ``(composition dict, energy per atom)``; ``hull_reason`` ``no_elemental_reference`` when a pure phase is missing."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    have = {next(iter(c)) for c, _ in entries if len(c) == 1}
    missing = sorted(set(elements) - have)
    if missing:
        return {"e_above_hull": None, "hull_reason": "no_elemental_reference", "hull_detail": f"no relaxed pure phase of {','.join(missing)} in the reference corpus"}
    pd_entries = []
    for c, e in entries:
        comp = Composition(c)
        pd_entries.append(PDEntry(comp, e * comp.num_atoms))
    pd = PhaseDiagram(pd_entries)
    comp = Composition(formula_counts)
    entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
    decomp, e_hull = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
    return {
        "e_above_hull": round(float(e_hull), 6),
        "hull_reason": None,
        "hull_detail": "",
        "hull_decomposition": sorted(d.composition.reduced_formula for d in decomp),
    }


def _relax_many(
    texts: Sequence[str], settings: StabilitySettings, progress: Callable[[int], Any] | None = None
) -> list[dict[str, Any]]:
    """Relax every text (``settings.workers`` processes, ``settings.time_limit_s`` each), in input order."""
    out: list[dict[str, Any]] = [{} for _ in texts]
    for i, rec in map_with_time_limit(
        RelaxTask(settings), list(texts), settings.time_limit_s, settings.workers, on_failure=lambda t, r, d: _fail(r, d), progress=progress
    ):
        out[i] = rec
    return out


def run_stability(
    texts: Sequence[str],
    sample_ids: Sequence[str],
    verdicts: Sequence[dict[str, Any]],
    reference: HullReference | None,
    settings: StabilitySettings,
    cache_dir: str | Path,
    progress: Callable[[str, int], Any] | None = None,
    dft_hull: DftHull | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Relax every valid sample (``verdicts[i]["valid"]``), relax the references of every chemical system the samples
    need, and place each sample on its hull. Returns one stability record per sample (all keys of a relaxation
    record plus ``e_above_hull``, ``stable``, ``metastable``, ``hull_*``, ``cached``) and run statistics.
    ``dft_hull``: place samples on this DFT-anchored hull instead (``reference`` is then ignored: nothing but the
    samples is relaxed; ``hull_n_references`` counts its competing phases; ``formation_energy_per_atom`` is added)."""
    pkey = potential_key(settings.model, settings.potential)
    if dft_hull is not None:
        reference = None
    cache = StabilityCache(cache_dir, pkey, settings)
    stats: dict[str, Any] = {"potential": pkey}
    t0 = time.perf_counter()
    recs: list[dict[str, Any]] = []
    todo: list[int] = []
    keys = [cache.key(str(sid), t) for sid, t in zip(sample_ids, texts, strict=True)]
    for i, v in enumerate(verdicts):
        if not v.get("valid"):
            recs.append({**_fail("not_valid", f"first failed check: {v.get('reason')}"), "cached": False})
            continue
        hit = cache.get(keys[i])
        recs.append({**hit, "cached": True} if hit is not None else {})
        if hit is None:
            todo.append(i)
    # references the samples need, minus those cached
    need: dict[str, list[tuple[str, str]]] = {}
    ref_entries: dict[str, dict[str, dict[str, Any]]] = {}
    if reference is not None:
        systems: set[str] = set()
        for i, v in enumerate(verdicts):
            if v.get("valid"):
                els = _elements_of(texts[i])
                if els:
                    systems.update(reference.subsystems(els))
        for sysname in sorted(systems):
            have = cache.system(sysname)
            refs = reference.systems[sysname][: settings.max_refs_per_system]
            ref_entries[sysname] = {}
            for rid, rt in refs:
                h = _sha(rt)
                if h in have and have[h].get("reason") not in TRANSIENT_REASONS:
                    ref_entries[sysname][h] = have[h]
                else:
                    need.setdefault(sysname, []).append((rid, rt))
        stats["hull_systems"] = len(systems)
        stats["references_cached"] = sum(len(v) for v in ref_entries.values())
        stats["references_truncated"] = sum(max(0, len(reference.systems[s]) - settings.max_refs_per_system) for s in systems)
    ref_items = [(s, rid, rt) for s, rows in need.items() for rid, rt in rows]
    jobs = [texts[i] for i in todo] + [rt for _, _, rt in ref_items]
    cb = progress("stability", len(jobs)) if progress and jobs else None
    t1 = time.perf_counter()
    results: list[dict[str, Any]] = [{} for _ in jobs]
    for j, rec in map_with_time_limit(RelaxTask(settings), jobs, settings.time_limit_s, settings.workers, on_failure=lambda t, r, d: _fail(r, d), progress=cb):
        results[j] = rec
        if j < len(todo):  # cached as it arrives: an interrupted run keeps what it relaxed
            cache.put([(keys[todo[j]], rec)])
    stats["relax_s"] = round(time.perf_counter() - t1, 3)
    stats["relaxed_samples"] = len(todo)
    stats["relaxed_references"] = len(ref_items)
    for j, i in enumerate(todo):
        recs[i] = {**results[j], "cached": False}
    for (sysname, rid, rt), r in zip(ref_items, results[len(todo) :], strict=True):
        ref_entries[sysname][_sha(rt)] = {"id": rid, "formula": r.get("formula"), "energy_per_atom": r.get("energy_per_atom"), "converged": r.get("converged"), "ok": r.get("ok"), "reason": r.get("reason")}
    for sysname in need:
        cache.put_system(sysname, {h: e for h, e in ref_entries[sysname].items() if e.get("reason") not in TRANSIENT_REASONS})
    stats["reference_failures"] = dict(Counter(e.get("reason") for es in ref_entries.values() for e in es.values() if not e.get("ok")))
    # hull
    t2 = time.perf_counter()
    scorer = HullScorer(_potential(settings), dft_hull, stable_threshold=settings.stable_threshold, metastable_threshold=settings.metastable_threshold) if dft_hull is not None else None
    for i, r in enumerate(recs):
        r.update(e_above_hull=None, stable=None, metastable=None, hull_reason=None, hull_n_references=None)
        if not r.get("ok"):
            continue
        if scorer is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                placed = scorer.place(text_to_structure(texts[i]), float(r["energy_per_atom"]))
            r.update({k: v for k, v in placed.items() if k != "hull_n_entries"}, hull_n_references=placed.get("hull_n_entries"))
            continue
        if reference is None:
            r["hull_reason"] = "no_reference"
            continue
        els = r["elements"]
        entries = []
        for sysname in reference.subsystems(els):
            for e in ref_entries.get(sysname, {}).values():
                if e.get("ok") and e.get("energy_per_atom") is not None and e.get("formula"):
                    entries.append((_comp_dict(e["formula"]), float(e["energy_per_atom"])))
        h = hull_energy(els, _comp_dict(r["formula"]), float(r["energy_per_atom"]), entries)
        r.update(h)
        r["hull_n_references"] = len(entries)
        if h["e_above_hull"] is not None:
            r["stable"] = h["e_above_hull"] <= settings.stable_threshold
            r["metastable"] = h["e_above_hull"] <= settings.metastable_threshold
    stats["hull_s"] = round(time.perf_counter() - t2, 3)
    stats["wall_s"] = round(time.perf_counter() - t0, 3)
    stats["cache_hits"] = sum(bool(r.get("cached")) for r in recs)
    return recs, stats


def prepare_hull(reference: HullReference, systems: Sequence[str], settings: StabilitySettings, cache_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Relax the uncached references of each exact chemical system in ``systems`` (one system at a time) and write
    its cache file, so that :func:`run_stability` finds them; returns per system ``{n_refs, relaxed, failed,
    seconds}`` (the hull-building cost per chemical system)."""
    cache = StabilityCache(cache_dir, potential_key(settings.model, settings.potential), settings)
    out: dict[str, dict[str, Any]] = {}
    for sysname in systems:
        t0 = time.perf_counter()
        have = cache.system(sysname)
        refs = reference.systems.get(sysname, [])[: settings.max_refs_per_system]
        todo = [(rid, rt) for rid, rt in refs if _sha(rt) not in have]
        results = _relax_many([rt for _, rt in todo], settings) if todo else []
        entries = {h: e for h, e in have.items() if h in {_sha(rt) for _, rt in refs}}
        for (rid, rt), r in zip(todo, results, strict=True):
            entries[_sha(rt)] = {"id": rid, "formula": r.get("formula"), "energy_per_atom": r.get("energy_per_atom"), "converged": r.get("converged"), "ok": r.get("ok"), "reason": r.get("reason")}
        if todo:
            cache.put_system(sysname, {h: e for h, e in entries.items() if e.get("reason") not in TRANSIENT_REASONS})
        out[sysname] = {"n_refs": len(refs), "relaxed": len(todo), "failed": sum(not e.get("ok") for e in entries.values()), "seconds": round(time.perf_counter() - t0, 3)}
    return out


def _comp_dict(formula: str) -> dict[str, float]:
    from pymatgen.core import Composition

    return {str(k): float(v) for k, v in Composition(formula).get_el_amt_dict().items()}


def _elements_of(text: str) -> list[str]:
    from pymatgen.core import Composition


    try:
        return sorted(e.symbol for e in Composition(parse_canonical(text).formula).elements)
    except Exception:
        return []


def reason_of(rec: dict[str, Any]) -> str | None:
    """Why a sample has no stable/metastable verdict (None when it has one)."""
    if rec.get("stable") is not None:
        return None
    return rec.get("reason") or rec.get("hull_reason") or "unknown"


def _stats(xs: Sequence[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0, "min": None, "median": None, "mean": None, "p90": None, "max": None}
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "min": round(float(a.min()), 5), "median": round(float(np.median(a)), 5), "mean": round(float(a.mean()), 5), "p90": round(float(np.quantile(a, 0.9)), 5), "max": round(float(a.max()), 5)}


def summarize_stability(recs: Sequence[dict[str, Any]], verdicts: Sequence[dict[str, Any]], settings: StabilitySettings, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts, rates over all samples with Wilson 95% intervals, rates among measured samples, reasons and
    distributions. S.U.N. needs uniqueness and novelty: null when either was not measured for any valid sample."""
    n = len(recs)
    measured = [r for r in recs if r.get("e_above_hull") is not None]
    m = len(measured)
    novelty_measured = any(v.get("novel") is not None for v in verdicts)
    unique_measured = any(v.get("unique") is not None for v in verdicts)

    def count(flag: str, sun: bool) -> int:
        return sum(bool(r.get(flag)) and (not sun or (v.get("unique") is True and v.get("novel") is True)) for r, v in zip(recs, verdicts, strict=True))

    counts: dict[str, int | None] = {"stable": count("stable", False), "metastable": count("metastable", False)}
    sun_ok = novelty_measured and unique_measured
    counts["sun"] = count("stable", True) if sun_ok else None
    counts["msun"] = count("metastable", True) if sun_ok else None

    def rate(k: int | None, d: int) -> dict[str, Any]:
        return {"count": k, "n": d, "rate": (k / d if d and k is not None else None), "ci95": (wilson_interval(k, d) if k is not None else None)}

    reasons = Counter(reason_of(r) for r in recs if reason_of(r) is not None)
    return {
        "n_samples": n,
        "n_valid": sum(bool(v.get("valid")) for v in verdicts),
        "n_relaxed": sum(r.get("energy_per_atom") is not None for r in recs),
        "n_converged": sum(r.get("converged") is True for r in recs),
        "n_e_hull": m,
        "rates": {k: rate(c, n) for k, c in counts.items()},
        "rates_among_measured": {k: rate(c, m) for k, c in counts.items()},
        "reasons": dict(reasons.most_common()),
        "e_above_hull": _stats([r["e_above_hull"] for r in measured]),
        "rmsd_A": _stats([r["rmsd_A"] for r in recs if r.get("rmsd_A") is not None and r.get("converged")]),
        "steps": _stats([float(r["steps"]) for r in recs if r.get("steps") is not None]),
        "relax_time_s": _stats([r["time_s"] for r in recs if r.get("time_s") is not None and not r.get("cached")]),
        "definitions": {
            "stable": f"E_hull <= {settings.stable_threshold:g} eV/atom",
            "metastable": f"E_hull <= {settings.metastable_threshold:g} eV/atom",
            "sun": "stable, unique and novel (MatterGen S.U.N.)",
            "msun": "metastable, unique and novel (M.S.U.N.)",
            "rates": "over all samples (unmeasured counts as not stable), Wilson 95% interval",
            "rates_among_measured": "over samples with an E_hull",
            "rmsd_A": "RMS site displacement generated -> relaxed (A), converged relaxations",
        },
        "settings": asdict(settings),
        "run": stats or {},
        "caveats": list(CAVEATS),
    }


def stability_plots(out: str | Path, recs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """E_hull histogram and RMSD histogram into ``<out>/plots``; returns (title, relative path) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = Path(out) / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str]] = []
    eh = [r["e_above_hull"] for r in recs if r.get("e_above_hull") is not None]
    if eh:
        lo, hi = -0.3, 1.0
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(np.clip(eh, lo, hi), bins=np.linspace(lo, hi, 53), color="#4477aa")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.axvline(0.1, color="#ee6677", lw=0.8, ls="--", label="metastable (0.1 eV/atom)")
        ax.set_xlabel("E above hull (eV/atom, CHGNet; clipped to [-0.3, 1.0])")
        ax.set_ylabel("samples")
        ax.set_title(f"Energy above hull (n={len(eh)})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(pdir / "e_above_hull.png", dpi=100)
        plt.close(fig)
        made.append(("Energy above hull", "plots/e_above_hull.png"))
    rm = [r["rmsd_A"] for r in recs if r.get("rmsd_A") is not None and r.get("converged")]
    if rm:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(np.clip(rm, 0, 2.0), bins=np.linspace(0, 2.0, 41), color="#228833")
        ax.set_xlabel("RMS displacement generated -> relaxed (A, clipped to 2)")
        ax.set_ylabel("samples")
        ax.set_title(f"Distance to the CHGNet local minimum (n={len(rm)})")
        fig.tight_layout()
        fig.savefig(pdir / "rmsd.png", dpi=100)
        plt.close(fig)
        made.append(("RMS displacement on relaxation", "plots/rmsd.png"))
    return made


def stability_stage(cfg: Any, samples: Sequence[dict[str, Any]], texts: Sequence[str], verdicts: Sequence[dict[str, Any]], out: Path, log: Callable[[str], None] = print, progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """The ``stability=true`` part of ``cifllm evaluate``: writes ``stability.jsonl`` (one record per sample, relaxed
    CIF included) and plots; returns ``metrics["stability"]``. The cache folder is ``stability_cache`` (default
    ``<out>/stability_cache``); the hull references come from ``reference`` (``reference_split``)."""
    settings = StabilitySettings.from_config(cfg, cfg.n_workers())
    potential_key(settings.model, settings.potential)  # fail early without the extra
    reference = None
    dft_hull = None
    if settings.hull == "dft":
        t0 = time.perf_counter()
        dft_hull = DftHull.from_corpus(cfg.reference, split=cfg.reference_split) if cfg.reference else DftHull.from_registry()
        log(f"stability: DFT-anchored hull from {dft_hull.source} ({len(dft_hull.entries)} phases with a DFT formation energy, {time.perf_counter() - t0:.1f} s)")
    elif cfg.reference:
        t0 = time.perf_counter()
        reference = HullReference.from_corpus(cfg.reference, split=cfg.reference_split)
        log(f"stability: hull references from {cfg.reference} ({sum(len(v) for v in reference.systems.values())} structures, {len(reference.systems)} chemical systems, {time.perf_counter() - t0:.1f} s)")
    else:
        log("stability: no reference= corpus: samples are relaxed but not placed on a hull (reason no_reference)")
    cache_dir = Path(cfg.stability_cache) if cfg.stability_cache else out / "stability_cache"
    ids = [str(s.get("sample_id") if s.get("sample_id") is not None else i) for i, s in enumerate(samples)]
    recs, stats = run_stability(texts, ids, verdicts, reference, settings, cache_dir, progress, dft_hull=dft_hull)
    lines = [json.dumps({"sample_id": sid, **r}) for sid, r in zip(ids, recs, strict=True)]
    atomic_write_text(out / "stability.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    summary = summarize_stability(recs, verdicts, settings, {**stats, "cache": str(cache_dir)})
    summary["plots"] = [list(p) for p in stability_plots(out, recs)]
    r = summary["rates"]
    log(
        f"stability: {summary['n_e_hull']}/{summary['n_samples']} on a hull; stable {pct(r['stable']['rate'])}, metastable {pct(r['metastable']['rate'])}, "
        f"S.U.N. {pct(r['sun']['rate'])}, M.S.U.N. {pct(r['msun']['rate'])}; reasons {summary['reasons']} ({stats['wall_s']:.1f} s, {stats['cache_hits']} cached)"
    )
    return summary


