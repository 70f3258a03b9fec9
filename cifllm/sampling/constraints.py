"""Constraint engine: a per-sequence state machine over token ids that only lets a model write consistent v2 text.

No model code here: a :class:`CIFConstraint` is fed the tokens of a sequence (prompt first, then each sampled
token) and answers, before every step, which token ids may come next (:meth:`CIFConstraint.allowed`: a boolean
mask over the vocabulary, or a single forced id). Engines turn that into a logits mask (HF ``LogitsProcessor``,
vLLM logits processor), so the same rules hold on any engine and with any model.

The machine walks the canonical v2 layout (:mod:`cifllm.cif.canonical`) through named states (:class:`State`, in this
order; :attr:`CIFConstraint.state`). Each state has one rule, a generator method ``CIFConstraint._rule_<state>`` that
yields the state's tokens one at a time (a forced id, or a set of allowed ids), receives the chosen id, and returns
the next state (``CIFConstraint._RULES``). A new constraint goes into the rule of the state whose tokens it limits.

====================  ==========================================================================================
state                 rule
====================  ==========================================================================================
DATA                  ``data_`` forced
FORMULA               elements in electronegativity order (each once), integer counts without leading zeros, at
                      most ``max_atoms`` atoms and ``max_elements`` elements; with ``max_tokens``, a digit or an
                      element only if the formula ending there still fits the budget in some space group (token
                      budget, below); a prompt's formula is checked the same way, the budget on the whole formula
                      (unknown element / too many atoms -> :class:`ConstraintError` before sampling)
SPACE_GROUP           only symbols whose Wyckoff multiplicities can realize the counts (a small knapsack over
                      the positions with free parameters, usable any number of times, and the fixed points,
                      usable once each: :func:`realizable`) and, with ``max_tokens``, in rows that fit the budget;
                      Int_Tables number forced
CELL                  numbers in the fixed format (``%.4f``) within ``length_range`` / ``angle_range``; the
                      crystal system's equalities and fixed angles forced (a=b, a=b=c, 90, 120); the last free
                      cell number is limited so the volume is >= ``min_volume_per_atom`` x atoms
COMPUTED              ``_cell_volume``, ``_cell_formula_units_Z`` and ``_chemical_formula_structural`` forced
LOOP_HEADER           forced
ROW_SITE              element forced (formula order, until its count is used up), label forced; END once every
                      count is used up
ROW_POSITION          multiplicity and letter: only positions whose multiplicity fits the element's remaining
                      count, fixed points not used yet, and such that the remaining counts stay realizable (no
                      dead end) - with ``max_tokens``, in rows that fit the tokens left; among those, fixed points
                      not closer than their closest distance to an atom already written (geometry guard)
ROW_COORDINATES       constants and tied coordinates forced, free ones sampled as ``0.dddd``; geometry guard: the
                      digits of a row's last free coordinate are limited to values whose orbit keeps every pair of
                      atoms (the orbit's own images included) >= ``min_bond_ratio`` (0.7) x their expected bond
                      length (CrystaLLM's radii; its bond rule fails below 0.68) and >= ``min_distance`` (0.5
                      Angstrom); where no value can, >= ``min_distance`` only
ROW_OCCUPANCY         occupancy ``1`` and the newline forced; the row's atoms then count; next ROW_SITE
END                   ``<|eos|>`` only after a complete row and when every count is used up
DONE                  finished (``<|eos|>`` only)
====================  ==========================================================================================

Level ``grammar`` (the ablation) keeps the grammar and the computed fields but relaxes SPACE_GROUP (any group),
ROW_SITE (the model picks any formula element, or ``<|eos|>`` after a complete row), ROW_POSITION (any position)
and ROW_COORDINATES (no guard), and does no accounting in ROW_OCCUPANCY.

Token budget (``max_tokens``: the engines set it from ``max_new_tokens``; the count runs from ``data_`` to
``<|eos|>``, both included, and the machine counts the tokens it has consumed exactly). What is left once a formula
is known is bounded per space group: the header at its longest (:class:`TokenBudget`, from the tokenizer: free cell
numbers at the range's upper end, about 113 tokens) plus the fewest atom-site rows that realize the counts
(:func:`min_rows`: the realizability knapsack as a min-count search; fixed points once, free positions reusable)
times a row's length (:func:`row_tokens`: 30 + digits of the label index + digits of the multiplicity, <= 36).
Every choice keeps such a completion: a formula digit or element only if the formula ending there fits in some
group, the group only if it fits, a row's position only if the counts left fit the rows' tokens left (the current
row's length is then exact). By induction no sample can run out of tokens, and a 48-atom cell in Fm-3m (2 rows)
starts where one row per atom (P1) would need ~1,700.

The guard masks digits instead of rejecting a completed row and resampling it: logits processors (vLLM's
included) cannot take back tokens, and masking is exact at the 4-decimal resolution of the text. Counted per
sequence (:class:`ConstraintStats`): rows where the guard removed values, letters blocked by geometry, and dead
ends (no allowed token: possible only when the free coordinates written before a row's last one leave it no room;
the sequence is then ended and the sample is kept with reason ``constraint_dead_end``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache, partial
from itertools import product
from typing import Any, ClassVar

import numpy as np
from pymatgen.core import Composition, Element, Lattice

from cifllm.cif.bonds import expected_bond_length
from cifllm.cif.canonical import (
    LOOP_TAGS,
    SPACE_GROUP_SYMBOLS,
    cell_volume,
    element_order,
    format_formula,
    format_number,
    symmetry_ops,
)
from cifllm.cif.wyckoff import WyckoffPosition, coordinate_plan, space_group_wyckoff, wyckoff_coords
from cifllm.errors import CifllmError
from cifllm.tokenization import ELEMENTS

__all__ = [
    "ConstraintConfig",
    "ConstraintError",
    "ConstraintStats",
    "CIFConstraint",
    "State",
    "TokenBudget",
    "TokenTable",
    "crystal_system_rules",
    "min_rows",
    "realizable",
    "realizable_space_groups",
    "row_tokens",
    "rows_tokens",
]


class ConstraintError(CifllmError, ValueError):
    """A prompt the engine cannot continue (unknown element, too many atoms, unrealizable space group, ...)."""


@dataclass(frozen=True)
class ConstraintConfig:
    """Settings of the constraint engine (Angstrom, degrees, atoms)."""

    #: closest distance between two atoms of a generated cell the guard aims for (Angstrom); where no value of a
    #: row can keep it, the row keeps ``hard_distance`` instead (counted as ``soft_failures``)
    min_distance: float = 0.5
    #: never closer than this (Angstrom), to any atom or to a fixed point not used yet: nothing can merge on parsing
    hard_distance: float = 0.1
    #: the guard also aims to keep every pair of atoms (neither of them H) >= this x their expected bond length
    #: (:func:`cifllm.cif.bonds.expected_bond_length`: CrystaLLM's bond-length rule fails a bond below 0.68 of it); where
    #: no value of a row can, the row keeps ``min_distance`` instead (counted as ``bond_fallbacks``); 0 = off
    min_bond_ratio: float = 0.7
    #: every free cell number is limited so that volume / atoms >= this stays reachable (Angstrom^3; the corpus
    #: filter's bound)
    min_volume_per_atom: float = 1.5
    #: allowed cell lengths (Angstrom) and angles (degrees)
    length_range: tuple[float, float] = (1.0, 100.0)
    angle_range: tuple[float, float] = (30.0, 150.0)  #: allowed cell angles (degrees)
    #: most atoms in the conventional cell / distinct elements
    max_atoms: int = 200
    max_elements: int = 8  #: most distinct elements in the formula
    #: heaviest element (atomic number) the formula may use: the corpus drops everything beyond Pu
    max_z: int = 94
    #: ``full``: everything below; ``grammar``: only the grammar and the computed fields (formula order, Int_Tables,
    #: cell equalities, volume, Z, formula, labels, multiplicity from the letter, Wyckoff coordinate forms), rows of any
    #: formula element at any position and EOS after any row - the ablation without composition accounting/geometry
    level: str = "full"
    #: tokens the whole CIF (from ``data_`` to ``<|eos|>``, both included) may take, 0 = unbounded. The engines set it
    #: from ``max_new_tokens``. Every choice then keeps a completion within budget (:class:`TokenBudget`): the formula
    #: grows only while some space group can write it in the tokens left (worst-case header + its fewest Wyckoff rows,
    #: :func:`min_rows`), the space group only among those that fit, each row's position only if the counts left still
    #: fit the rows' tokens left. ``max_atoms`` stays a hard cap.
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.level not in ("full", "grammar"):
            raise ValueError(f"constraint level must be 'full' or 'grammar', got {self.level!r}")


@dataclass
class ConstraintStats:
    """Per-sequence counters: ``guarded_rows`` (rows whose last free coordinate lost values to the geometry guard),
    ``blocked_letters`` (fixed points refused because an atom is too close), ``dead_end`` (reason, or empty)."""

    guarded_rows: int = 0
    blocked_letters: int = 0
    soft_failures: int = 0
    bond_fallbacks: int = 0
    dead_end: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "guarded_rows": self.guarded_rows,
            "blocked_letters": self.blocked_letters,
            "soft_failures": self.soft_failures,
            "bond_fallbacks": self.bond_fallbacks,
            "dead_end": self.dead_end or None,
        }


# ----------------------------------------------------------------------------------------------------------------
# space-group realizability (composition accounting)


@lru_cache(maxsize=230)
def _group_multiplicities(number: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(multiplicities of positions with free parameters, ((fixed multiplicity, how many such points), ...))."""
    free = sorted({w.multiplicity for w in space_group_wyckoff(number) if w.dof > 0})
    fixed: dict[int, int] = {}
    for w in space_group_wyckoff(number):
        if w.dof == 0:
            fixed[w.multiplicity] = fixed.get(w.multiplicity, 0) + 1
    return tuple(free), tuple(sorted(fixed.items()))


@lru_cache(maxsize=230)
def _free_sums(number: int, limit: int = 1024) -> frozenset[int]:
    """Counts (<= ``limit``) that positions with free parameters alone can give (unbounded knapsack)."""
    free, _ = _group_multiplicities(number)
    ok = np.zeros(limit + 1, dtype=bool)
    ok[0] = True
    for m in free:
        for c in range(m, limit + 1):
            if ok[c - m]:
                ok[c] = True
    return frozenset(np.flatnonzero(ok).tolist())


@lru_cache(maxsize=200_000)
def _feasible(number: int, counts: tuple[int, ...], avail: tuple[int, ...]) -> bool:
    """Can ``counts`` (sorted, no zeros) be written with the free positions of ``number`` plus the fixed points
    ``avail`` (available count per fixed multiplicity, in the order of :func:`_group_multiplicities`)?"""
    if not counts:
        return True
    sums = _free_sums(number)
    _, fixed = _group_multiplicities(number)
    mults = [m for m, _ in fixed]
    first, rest = counts[0], counts[1:]

    def choose(i: int, left: int, used: list[int]) -> bool:
        if i == len(mults):
            if left in sums:
                new_avail = tuple(a - u for a, u in zip(avail, used))
                return _feasible(number, rest, new_avail)
            return False
        return any(choose(i + 1, left - k * mults[i], used + [k]) for k in range(min(avail[i], left // mults[i]) + 1))

    return choose(0, first, [])


def realizable(number: int, counts: Iterable[int], used_fixed: Sequence[WyckoffPosition] = ()) -> bool:
    """True if element counts ``counts`` fit the Wyckoff positions of space group ``number`` (fixed points usable
    once, minus ``used_fixed``; positions with free parameters any number of times). Geometry is not considered."""
    _, fixed = _group_multiplicities(number)
    avail = [n for _, n in fixed]
    for w in used_fixed:
        avail[[m for m, _ in fixed].index(w.multiplicity)] -= 1
    c = tuple(sorted(int(x) for x in counts if x))
    if any(a < 0 for a in avail):
        return False
    return _feasible(number, c, tuple(avail))


@lru_cache(maxsize=4096)
def realizable_space_groups(counts: tuple[int, ...]) -> tuple[int, ...]:
    """Space-group numbers whose Wyckoff multiplicities can realize element counts ``counts``."""
    return tuple(n for n in range(1, 231) if realizable(n, counts))


_ELEMENT_SYMBOLS = frozenset(ELEMENTS)
_NO_ROWS = 10**9  # "cannot be realized" in the min-rows tables


_COUNT_LIMIT = 1024  # the largest count the knapsack tables cover


def _knapsack_rows(number: int, with_fixed: bool) -> np.ndarray:
    """Per count c <= ``_COUNT_LIMIT``: fewest rows adding up to c from the positions with free parameters of
    ``number`` (reusable) and, with ``with_fixed``, its fixed points (once each); ``_NO_ROWS`` if impossible. A
    reusable multiplicity m gives best[c] = min_j best[c - j m] + j (a running minimum per residue mod m), a fixed
    point best[c] = min(best[c], best[c - m] + 1)."""
    n = _COUNT_LIMIT + 1
    best = np.full(n, _NO_ROWS, dtype=np.int64)
    best[0] = 0
    free, fixed = _group_multiplicities(number)
    for m in free:
        rows = -(-n // m)
        grid = np.full(rows * m, _NO_ROWS, dtype=np.int64)
        grid[:n] = best
        grid = grid.reshape(rows, m)
        j = np.arange(rows, dtype=np.int64)[:, None]
        best = np.minimum((np.minimum.accumulate(grid - j, axis=0) + j).reshape(-1)[:n], _NO_ROWS)
    for m, k in fixed if with_fixed else ():
        for _ in range(k):
            shifted = np.full(n, _NO_ROWS, dtype=np.int64)
            shifted[m:] = best[:-m] + 1
            best = np.minimum(best, shifted)
    return best


@lru_cache(maxsize=230)
def _free_min_rows(number: int) -> tuple[int, ...]:
    """Per count: fewest rows of positions with free parameters alone (:func:`_knapsack_rows`), as a tuple."""
    return tuple(_knapsack_rows(number, with_fixed=False).tolist())


@lru_cache(maxsize=230)
def _single_min_rows(number: int) -> np.ndarray:
    """Per count: fewest rows writing it for one element with every fixed point available - a lower bound of that
    count's rows in :func:`_min_rows` (fixed points shared by several elements can only add rows)."""
    return _knapsack_rows(number, with_fixed=True)


@lru_cache(maxsize=200_000)
def _min_rows(number: int, counts: tuple[int, ...], avail: tuple[int, ...]) -> int:
    """Fewest rows writing ``counts`` (sorted, no zeros) with the free positions of ``number`` plus the fixed points
    ``avail`` (as in :func:`_feasible`); ``_NO_ROWS`` if impossible. The first count takes k_i fixed points of each
    fixed multiplicity (k_i <= avail_i, one row each) and the rest from free positions (fewest rows: the min-coin
    table); the other counts recurse on the fixed points left."""
    if not counts:
        return 0
    free = _free_min_rows(number)
    _, fixed = _group_multiplicities(number)
    mults = [m for m, _ in fixed]
    first, rest = counts[0], counts[1:]
    if first >= len(free):
        return _NO_ROWS
    best = _NO_ROWS
    ranges = [range(min(a, first // m) + 1) for a, m in zip(avail, mults)]
    for ks in product(*ranges):
        left = first - sum(k * m for k, m in zip(ks, mults))
        if left < 0 or free[left] >= _NO_ROWS:
            continue
        here = sum(ks) + free[left]
        if here >= best:
            continue
        tail = _min_rows(number, rest, tuple(a - k for a, k in zip(avail, ks)))
        best = min(best, here + tail)
    return best


def min_rows(number: int, counts: Iterable[int], used_fixed: Sequence[WyckoffPosition] = ()) -> int | None:
    """Fewest atom-site rows (Wyckoff orbits) that write element counts ``counts`` in space group ``number``: fixed
    points (no free parameter) once each, minus ``used_fixed``; positions with free parameters any number of times.
    ``None`` where :func:`realizable` is False. Geometry is not considered."""
    _, fixed = _group_multiplicities(number)
    avail = [n for _, n in fixed]
    for w in used_fixed:
        avail[[m for m, _ in fixed].index(w.multiplicity)] -= 1
    if any(a < 0 for a in avail):
        return None
    k = _min_rows(number, tuple(sorted(int(x) for x in counts if x)), tuple(avail))
    return None if k >= _NO_ROWS else k


@lru_cache(maxsize=230)
def _mult_digits(number: int) -> int:
    """Digits of the largest multiplicity of space group ``number`` (its general position)."""
    return max(len(str(w.multiplicity)) for w in space_group_wyckoff(number))


def crystal_system_rules(number: int) -> tuple[str, ...]:
    """Per cell number (a, b, c, alpha, beta, gamma): ``free``, ``=a`` or a fixed value ``90``/``120``
    (standardized conventional cells as spglib writes them)."""
    if number <= 2:
        return ("free", "free", "free", "free", "free", "free")
    if number <= 15:
        return ("free", "free", "free", "90", "free", "90")
    if number <= 74:
        return ("free", "free", "free", "90", "90", "90")
    if number <= 142:
        return ("free", "=a", "free", "90", "90", "90")
    if number <= 194:
        return ("free", "=a", "free", "90", "90", "120")
    return ("free", "=a", "=a", "90", "90", "90")


#: the cell's tags and names, in the order of :func:`crystal_system_rules`
_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_CELL_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")


# ----------------------------------------------------------------------------------------------------------------
# tokens


class TokenTable:
    """The token ids the engine needs, looked up in a cifllm tokenizer (``transformers`` or ``tokenizers``)."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._tok = backend
        vocab = backend.get_vocab(with_added_tokens=True) if hasattr(backend, "get_vocab") else tokenizer.get_vocab()
        self.vocab = vocab
        self.size = max(vocab.values()) + 1
        self.eos = vocab["<|eos|>"]
        self.bos = vocab["<|bos|>"]
        self.digit = [vocab[str(d)] for d in range(10)]
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.sg_id = {vocab[s]: n for n, s in enumerate(SPACE_GROUP_SYMBOLS, 1)}
        self.element_id: dict[int, str] = {}
        for t, i in vocab.items():
            # the tokenizer's element symbols only: pymatgen also parses the one-character tokens D and T (H
            # isotopes, merged with H in a Composition, so a formula with D and H broke the composition accounting)
            if t in _ELEMENT_SYMBOLS:
                self.element_id[i] = t
        self._cache: dict[str, tuple[int, ...]] = {}

    def ids(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` as the tokenizer splits it (cached; no BOS)."""
        if text not in self._cache:
            self._cache[text] = tuple(self._tok.encode(text, add_special_tokens=False).ids)
        return self._cache[text]

    def one(self, text: str) -> int:
        ids = self.ids(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, expected one")
        return ids[0]

    def mask(self, ids: Iterable[int]) -> np.ndarray:
        m = np.zeros(self.size, dtype=bool)
        m[list(ids)] = True
        return m

    def budget(self, config: ConstraintConfig) -> TokenBudget:
        """The :class:`TokenBudget` of ``config``'s cell ranges (shared by every sequence: its caches are per table)."""
        key = (config.length_range, config.angle_range)
        budgets = self.__dict__.setdefault("_budgets", {})
        if key not in budgets:
            budgets[key] = TokenBudget(self, config)
        return budgets[key]


# ----------------------------------------------------------------------------------------------------------------
# token budget

#: Tokens of an atom-site row besides its label index and multiplicity. The row ``El El<r> <m> <letter> x y z 1\n``
#: is: El, " ", El, <digits of r>, " ", <digits of m>, " ", letter, " ", three coordinates of 6 tokens each
#: (``0.dddd``: every coordinate, free or constant, lies in [0, 1) and has 4 decimals) with two spaces between them,
#: " ", "1", "\n" (elements, digits and punctuation are one token each; tests check it with the tokenizer).
ROW_TOKENS_FIXED = 30
#: of those, the tokens after the multiplicity: " ", letter, " ", coordinates (20), " ", "1", "\n"
_ROW_TAIL_TOKENS = 26


def row_tokens(row: int, multiplicity: int) -> int:
    """Exact tokens of atom-site row number ``row`` (0-based) of a position of ``multiplicity``."""
    return ROW_TOKENS_FIXED + len(str(row)) + len(str(multiplicity))


def _digits_below(n: int) -> int:
    """Sum of the digit counts of 0 .. n-1 (the label indices of the first n rows)."""
    total, lo, d = 0, 0, 1
    while lo < n:
        hi = 10**d
        total += (min(n, hi) - lo) * d
        lo, d = hi, d + 1
    return total


def rows_tokens(k: int, start: int, number: int) -> int:
    """Most tokens ``k`` rows with label indices ``start`` .. ``start+k-1`` take in space group ``number`` (each
    multiplicity at most its general position's)."""
    return k * (ROW_TOKENS_FIXED + _mult_digits(number)) + _digits_below(start + k) - _digits_below(start)


def _counts_tokens(counts: tuple[int, ...]) -> int:
    """Upper bound on the tokens of the header's count-dependent values: ``_chemical_formula_structural`` (each
    element one token, a reduced count has at most as many digits as its count, and pymatgen's special reduced
    formulas - O2, LiO2, H2O2 - add at most one digit to an element) and ``_cell_formula_units_Z`` (Z <= atoms)."""
    return len(counts) + sum(len(str(c)) for c in counts) + len(str(sum(counts)))


@dataclass
class _GroupScan:
    """Where :meth:`TokenBudget._scan` stands for one formula: the space groups in order of their lower bound on
    :meth:`TokenBudget.cost`, how many of them have been costed exactly, and the cheapest found so far."""

    #: per space group (index = number; index 0 a placeholder whose bound is never <= a stop), the lower bound
    bound: np.ndarray
    #: space-group numbers by ascending bound (stable sort)
    order: np.ndarray
    #: how many groups of ``order`` have been costed exactly (the position of the next one)
    scanned: int = 0
    #: least exact cost found so far (``_NO_ROWS``: none yet) and the group that has it (0: none)
    best_cost: int = _NO_ROWS
    best_group: int = 0

    def pending(self) -> bool:
        """Are groups left to cost (the first 230 entries of ``order``)?"""
        return self.scanned < 230

    def next_bound(self) -> int:
        """Lower bound of the next group to cost (only while :meth:`pending`)."""
        return int(self.bound[self.order[self.scanned]])


class TokenBudget:
    """Worst-case token counts of what a CIF still has to write once its formula is known.

    ``header[sg]``: tokens after the formula's newline up to the end of the loop header in space group ``sg``, with
    every free cell number at its longest (``%.4f`` of the range's upper end; ``=a`` as long as a; 90/120 exact),
    the volume at its longest (``<= a*b*c <= length_max^3``) and the count-dependent values left out
    (:func:`_counts_tokens`). :meth:`cost`: header + the fewest rows (:func:`min_rows`) at their longest + EOS.

    Which group fits is searched by branch and bound: a lower bound on every group's rows at once (each count alone,
    with every fixed point free for it: one table lookup per count), then the exact :func:`min_rows` only for groups
    whose bound fits, cheapest bound first (the bound is usually exact, so one or two exact calls decide).
    """

    def __init__(self, table: TokenTable, config: ConstraintConfig) -> None:
        n_ids = lambda text: len(table.ids(text))  # noqa: E731
        hi_len = min(config.length_range[1], 999.9999)  # _number writes at most 3 integer digits
        hi_ang = min(config.angle_range[1], 999.9999)
        fixed = (
            n_ids("_symmetry_space_group_name_H-M ")
            + 1
            + n_ids(f"_cell_volume {format_number(hi_len**3)}\n")
            + n_ids("_cell_formula_units_Z \n")
            + n_ids("_chemical_formula_structural \n")
            + n_ids("loop_\n" + "".join(tag + "\n" for tag in LOOP_TAGS))
        )
        self.header = np.zeros(231, dtype=np.int64)
        for sg in range(1, 231):
            cell = 0
            for i, (tag, rule) in enumerate(zip(_CELL_TAGS, crystal_system_rules(sg))):
                value = (format_number(hi_len) if i < 3 else format_number(hi_ang)) if rule in ("free", "=a") else format_number(float(rule))
                cell += n_ids(f"{tag} {value}\n")
            self.header[sg] = fixed + n_ids(f"\n_symmetry_Int_Tables_number {sg}\n") + cell
        self.header[0] = _NO_ROWS
        self._row_fixed = np.asarray([0] + [ROW_TOKENS_FIXED + _mult_digits(n) for n in range(1, 231)], dtype=np.int64)
        self._single = np.stack([np.full(_COUNT_LIMIT + 1, _NO_ROWS, dtype=np.int64)] + [_single_min_rows(n) for n in range(1, 231)])
        self._scans: dict[tuple[int, ...], _GroupScan] = {}

    def cost(self, sg: int, counts: tuple[int, ...]) -> int | None:
        """Most tokens after the formula's newline (EOS included) of a CIF in ``sg`` with the fewest rows; None where
        ``sg`` cannot realize ``counts`` (sorted)."""
        k = min_rows(sg, counts)
        if k is None:
            return None
        return int(self.header[sg]) + _counts_tokens(counts) + rows_tokens(k, 0, sg) + 1

    def lower(self, counts: tuple[int, ...]) -> np.ndarray:
        """Per space group (index = number), a lower bound on :meth:`cost` (huge where a count alone is unrealizable)."""
        if max(counts, default=0) > _COUNT_LIMIT:
            return np.full(231, _NO_ROWS, dtype=np.int64)
        rows = self._single[:, list(counts)].sum(axis=1)
        bad = rows >= _NO_ROWS
        rows[bad] = 0
        digits = sum(np.clip(rows - (10 ** (d - 1) if d > 1 else 0), 0, 10**d - (10 ** (d - 1) if d > 1 else 0)) * d for d in range(1, 6))
        lb = self.header + _counts_tokens(counts) + rows * self._row_fixed + digits + 1
        lb[bad] = _NO_ROWS
        return lb

    def _scan(self, counts: tuple[int, ...], stop: int) -> int:
        """Exact costs of groups in order of their lower bound while the bound is <= ``stop`` and no group found
        yet is <= ``stop``; returns the least cost found so far (resumable: the scan state is kept per counts)."""
        st = self._scans.get(counts)
        if st is None:
            lb = self.lower(counts)
            st = self._scans[counts] = _GroupScan(bound=lb, order=np.argsort(lb, kind="stable"))
        while st.best_cost > stop and st.pending() and st.next_bound() <= stop:
            sg = int(st.order[st.scanned])
            st.scanned += 1
            c = self.cost(sg, counts)
            if c is not None and c < st.best_cost:
                st.best_cost, st.best_group = c, sg
        return st.best_cost

    def best(self, counts: tuple[int, ...]) -> tuple[int, int]:
        """(least :meth:`cost` over the space groups, a group reaching it; ``_NO_ROWS``, 0 if none)."""
        st = self._scans.get(counts)
        while st is None or (st.pending() and st.next_bound() < st.best_cost):
            self._scan(counts, (st.best_cost - 1) if st else _NO_ROWS - 1)
            st = self._scans[counts]
        return st.best_cost, st.best_group

    def fits(self, counts: tuple[int, ...], used: int, max_tokens: int) -> bool:
        """Can a formula with ``counts`` (sorted), ending after ``used`` tokens (its newline included), be finished
        within ``max_tokens`` by some space group? P1 (one row per atom) is tried first: it is free to evaluate."""
        left = max_tokens - used
        if int(self.header[1]) + _counts_tokens(counts) + rows_tokens(sum(counts), 0, 1) + 1 <= left:
            return True
        return self._scan(counts, left) <= left

    def groups(self, counts: tuple[int, ...], left: int) -> tuple[int, ...]:
        """Space groups whose :meth:`cost` is <= ``left``."""
        lb = self.lower(counts)
        return tuple(sg for sg in range(1, 231) if lb[sg] <= left and (c := self.cost(sg, counts)) is not None and c <= left)


# ----------------------------------------------------------------------------------------------------------------
# the machine


class _Choice:
    """A set of allowed token ids (``mask``) offered to the model."""

    __slots__ = ("mask",)

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask


class _PromptToken(_Choice):
    """Any token, while a prompt is fed, where a rule reads the prompt's own tokens more leniently than it lets the
    model write (:meth:`CIFConstraint._pick`, :meth:`CIFConstraint._choose_sg`: the rule checks the token after it
    arrives). If the prompt ends there, :meth:`CIFConstraint.feed_prompt` sends :data:`_PROMPT_END` instead, and
    the rule offers what the model may write."""

    __slots__ = ()


#: sent to the rule whose :class:`_PromptToken` is pending when the prompt ends (not a token id)
_PROMPT_END = -1


class State(Enum):
    """The states of :class:`CIFConstraint`, in the order a CIF passes them; each has one rule (module docstring)."""

    DATA = "data_"
    FORMULA = "formula"
    SPACE_GROUP = "space group"
    CELL = "cell"
    COMPUTED = "computed fields"
    LOOP_HEADER = "loop header"
    ROW_SITE = "row site"
    ROW_POSITION = "row position"
    ROW_COORDINATES = "row coordinates"
    ROW_OCCUPANCY = "row occupancy"
    END = "end"
    DONE = "done"


class CIFConstraint:
    """State machine of one sequence. Feed the prompt with :meth:`feed_prompt` (raises :class:`ConstraintError`
    for a prompt the grammar cannot continue), then alternate :meth:`allowed` and :meth:`advance`. :attr:`state`
    is the :class:`State` whose rule gave :meth:`allowed`'s answer."""

    def __init__(self, table: TokenTable, config: ConstraintConfig | None = None) -> None:
        self.t = table
        self.cfg = config or ConstraintConfig()
        self.stats = ConstraintStats()
        self.done = False
        #: tokens consumed so far (prompt and sampled, from ``data_`` on; BOS not counted)
        self.n_tokens = 0
        self._budget = table.budget(self.cfg)
        self._feeding_prompt = False
        #: the state whose rule gave the pending answer of :meth:`allowed`
        self.state = State.DATA
        # what the states have fixed so far, set as each state passes
        self.counts: dict[str, int] = {}  # FORMULA: element -> atoms in the cell, formula order
        self.composition = Composition()
        self.formula_end = 0  # FORMULA: tokens up to and including the formula's newline
        self.sg = 0  # SPACE_GROUP: its number
        self.cell: tuple[float, ...] = ()  # CELL: a, b, c (Angstrom), alpha, beta, gamma (degrees)
        self.volume = 0.0  # COMPUTED (Angstrom^3)
        # LOOP_HEADER on: the geometry and the accounting of the rows
        self.lattice = np.zeros((3, 3))
        self.rots, self.trans = np.zeros((0, 3, 3)), np.zeros((0, 3))
        self.positions: Sequence[WyckoffPosition] = ()
        self.atoms = np.zeros((0, 3))  # fractional positions of every atom written (orbits expanded)
        self.atom_syms: list[str] = []  # their elements
        self.remaining: dict[str, int] = {}  # atoms each element still has to place
        self.used_fixed: list[WyckoffPosition] = []  # fixed points taken
        self.row = 0  # index of the current row (its label number)
        self.symbol = ""  # ROW_SITE: the current row's element
        self.position: WyckoffPosition | None = None  # ROW_POSITION: its Wyckoff position
        self.coords: tuple[float, ...] = ()  # ROW_COORDINATES: its fractional coordinates
        self._gen = self._program()
        self._pending = next(self._gen)

    # -- public API ------------------------------------------------------------------------------------------
    def allowed(self) -> int | np.ndarray:
        """The forced token id, or a boolean mask over the vocabulary of the allowed ids."""
        if self.done:
            return self.t.eos
        p = self._pending
        return p.mask if isinstance(p, _Choice) else p

    def advance(self, token: int) -> None:
        """Consume ``token`` (must be allowed; :class:`ConstraintError` otherwise)."""
        if self.done:
            return
        p = self._pending
        ok = bool(p.mask[token]) if isinstance(p, _Choice) else token == p
        if not ok:
            name = self.t.id_to_token.get(int(token), str(token))
            raise ConstraintError(f"token {name!r} is not allowed here ({self._where})")
        self.n_tokens += 1
        try:
            self._pending = self._gen.send(int(token))
        except StopIteration:
            self.done = True

    def feed_prompt(self, prompt_ids: Sequence[int]) -> None:
        """Consume the prompt's tokens (without BOS); a prompt the grammar refuses raises :class:`ConstraintError`."""
        self._feeding_prompt = True
        try:
            for tok in prompt_ids:
                if tok == self.t.bos:
                    continue
                self.advance(int(tok))
        finally:
            self._feeding_prompt = False
        if not self.done and isinstance(self._pending, _PromptToken):
            # the prompt ends inside a lenient choice (the formula, the space group): the rule now answers with
            # what the model may write there, as for any sample
            self._pending = self._gen.send(_PROMPT_END)
            if self.stats.dead_end:
                raise ConstraintError(f"the prompt cannot be continued ({self.stats.dead_end})")

    # -- helpers --------------------------------------------------------------------------------------------
    #: where in the text the machine is, for messages (finer than :attr:`state`: ``cell b``, ``row 3 (O) coord y``)
    _where = "start"

    def _force(self, text: str) -> Iterator[Any]:
        for tid in self.t.ids(text):  # noqa: UP028 (send() needs a generator, not a tuple iterator)
            yield tid

    def _choose(self, ids: Iterable[int]) -> Iterator[Any]:
        ids = list(ids)
        if not ids:
            raise _DeadEnd(self._where)
        if len(ids) == 1:
            tok = yield ids[0]
            return tok
        tok = yield _Choice(self.t.mask(ids))
        return tok

    def _pick(self, options: Callable[[], list[int]], why: Callable[[int], str]) -> Iterator[Any]:
        """Like :meth:`_choose` over ``options()``. While the prompt is fed, its token is read first and one
        outside ``options()`` (computed then, as a prompt is checked: see :meth:`_formula_fits`) raises
        ConstraintError(why(tok)); where the prompt ends here, the model gets ``options()`` as for any sample."""
        if self._feeding_prompt:
            tok = yield _PromptToken(np.ones(self.t.size, dtype=bool))
            if tok != _PROMPT_END:
                if tok not in options():
                    raise ConstraintError(why(tok))
                return tok
        tok = yield from self._choose(options())
        return tok

    def _choose_string(self, options: Iterable[str], end: str = "") -> Iterator[Any]:
        """Let the model pick one of ``options`` (strings) followed by ``end``, token by token. Returns the string
        (without ``end``). Give the separator that follows as ``end`` whenever an option can be a prefix of another
        (multiplicity 1 of 12, 2 of 24): without it the shorter option ends the choice as soon as it is written."""
        seqs = {o: self.t.ids(o + end) for o in options}
        if not seqs:
            raise _DeadEnd(self._where)
        prefix: tuple[int, ...] = ()
        while True:
            live = {o: s for o, s in seqs.items() if s[: len(prefix)] == prefix}
            done = [o for o, s in live.items() if len(s) == len(prefix)]
            if done:
                return done[0]
            nxt = {s[len(prefix)] for s in live.values()}
            tok = yield from self._choose(sorted(nxt))
            prefix = prefix + (tok,)

    def _number(self, lo: float, hi: float, max_int_digits: int) -> Iterator[Any]:
        """A ``%.4f`` number in [lo, hi], digit by digit (integer part without leading zeros). Returns its value."""
        if lo > hi:
            raise _DeadEnd(self._where)
        dot = self.t.one(".")
        int_part = ""
        while True:  # integer digits
            opts = []
            for d in range(10):
                s = int_part + str(d)
                if len(s) > 1 and s[0] == "0":
                    continue
                if len(s) > max_int_digits:
                    continue
                # some completion of s (more int digits possible) must land in [lo, hi]
                longest = 0 if s == "0" else max_int_digits - len(s)
                if any(_overlap(int(s) * 10**k, (int(s) + 1) * 10**k, lo, hi) for k in range(0, longest + 1)):
                    opts.append(self.t.digit[d])
            can_stop = int_part != "" and _overlap(int(int_part), int(int_part) + 1, lo, hi)
            if can_stop:
                opts.append(dot)
            tok = yield from self._choose(opts)
            if tok == dot:
                break
            int_part += str(self.t.digit.index(tok))
        frac = ""
        for _ in range(4):
            opts = []
            for d in range(10):
                base = float(f"{int_part}.{frac}{d}")
                width = 10.0 ** -(len(frac) + 1)
                if _overlap(base, base + width - 1e-4 + 1e-9, lo, hi, closed=True):
                    opts.append(self.t.digit[d])
            tok = yield from self._choose(opts)
            frac += str(self.t.digit.index(tok))
        return float(f"{int_part}.{frac}")

    # -- the states' rules ----------------------------------------------------------------------------------
    # One generator per State: it yields the state's tokens (a forced id, or a _Choice of allowed ids), receives the
    # chosen id back after each, and returns the next State. Work between two yields runs when the first token is
    # consumed, so it sees ``n_tokens`` as of that token.

    def _program(self) -> Iterator[Any]:
        """Run the states from DATA to DONE; a dead end becomes EOS (:attr:`ConstraintStats.dead_end`), or a
        :class:`ConstraintError` while a prompt is fed."""
        try:
            state = State.DATA
            while state is not State.DONE:
                self.state = state
                state = yield from self._RULES[state](self)
        except _DeadEnd as exc:
            if self._feeding_prompt:
                raise ConstraintError(f"the prompt cannot be continued ({exc})") from None
            self.stats.dead_end = str(exc)
            self.state = State.END
            yield self.t.eos
        self.state = State.DONE
        self.done = True

    def _rule_data(self) -> Iterator[Any]:
        """DATA: ``data_`` forced."""
        self._where = "data_"
        yield from self._force("data_")
        return State.FORMULA

    def _rule_formula(self) -> Iterator[Any]:
        """FORMULA: element, count, element, count, ... newline. Elements from :meth:`_formula_elements` (order,
        max_z, max_elements, max_atoms, token budget), count digits without a leading zero, within max_atoms and the
        budget (:meth:`_formula_fits`); the newline once a count is complete. A prompt's formula is checked whole at
        its newline (:class:`ConstraintError` if no space group can finish it within ``max_tokens``)."""
        t, cfg = self.t, self.cfg
        self._where = "formula"
        counts: dict[str, int] = {}
        newline = t.one("\n")
        why = partial(self._formula_error, counts)
        carry: int | None = None
        while True:
            if carry is None:
                tok = yield from self._pick(partial(self._formula_options, counts, None, ""), why)
            else:
                tok, carry = carry, None
            if tok == newline:
                break
            sym = t.element_id[tok]
            c = ""
            while True:
                tok = yield from self._pick(partial(self._formula_options, counts, sym, c), why)
                if tok in t.digit:
                    c += str(t.digit.index(tok))
                    continue
                break
            counts[sym] = int(c)
            if tok == newline:
                break
            carry = tok
        self.counts = dict(counts)
        self.composition = Composition(counts)
        self.formula_end = self.n_tokens
        key = tuple(sorted(counts.values()))
        if self._feeding_prompt and cfg.max_tokens and not self._budget.fits(key, self.formula_end, cfg.max_tokens):
            cost, best_sg = self._budget.best(key)
            need = self.formula_end + cost
            raise ConstraintError(
                f"formula {format_formula(self.composition)}: too many atoms for max_tokens={cfg.max_tokens}: the cheapest space group, "
                f"{SPACE_GROUP_SYMBOLS[best_sg - 1]}, needs {min_rows(best_sg, key)} atom-site rows, {need} tokens "
                f"from data_ to <|eos|> in the worst case; raise max_new_tokens by {need - cfg.max_tokens}"
            )
        return State.SPACE_GROUP

    def _rule_space_group(self) -> Iterator[Any]:
        """SPACE_GROUP: the H-M symbol among the groups that can realize the counts (:func:`realizable`) and, with
        ``max_tokens``, finish within it (:meth:`TokenBudget.groups`); any group at level ``grammar``. The
        Int_Tables number forced."""
        cfg = self.cfg
        self._where = "space group"
        yield from self._force("_symmetry_space_group_name_H-M ")
        key = tuple(sorted(self.counts.values()))
        if cfg.level == "grammar":
            groups: tuple[int, ...] = tuple(range(1, 231))
        elif cfg.max_tokens:
            groups = self._budget.groups(key, cfg.max_tokens - self.formula_end)
        else:
            groups = realizable_space_groups(key)
        sg_tok = yield from self._choose_sg(groups)
        self.sg = self.t.sg_id[sg_tok]
        yield from self._force(f"\n_symmetry_Int_Tables_number {self.sg}\n")
        return State.CELL

    def _rule_cell(self) -> Iterator[Any]:
        """CELL: a, b, c, alpha, beta, gamma as ``%.4f`` numbers in ``length_range`` / ``angle_range``; the crystal
        system's equalities and fixed angles forced (:func:`crystal_system_rules`); each free number limited so
        the volume can still reach ``min_volume_per_atom`` x atoms (:meth:`_volume_window`)."""
        cfg = self.cfg
        rules = crystal_system_rules(self.sg)
        n_atoms = sum(self.counts.values())
        values: list[float] = []
        for i, (tag, rule) in enumerate(zip(_CELL_TAGS, rules)):
            self._where = f"cell {_CELL_NAMES[i]}"
            yield from self._force(f"{tag} ")
            if rule == "free":
                lo, hi = cfg.length_range if i < 3 else cfg.angle_range
                lo, hi = self._volume_window(i, values, rules, lo, hi, n_atoms)
                v = yield from self._number(lo, hi, 3)
            elif rule == "=a":
                v = values[0]
                yield from self._force(format_number(v))
            else:
                v = float(rule)
                yield from self._force(format_number(v))
            values.append(v)
            yield from self._force("\n")
        self.cell = tuple(values)
        return State.COMPUTED

    def _rule_computed(self) -> Iterator[Any]:
        """COMPUTED: ``_cell_volume``, ``_cell_formula_units_Z`` and ``_chemical_formula_structural`` forced (from
        the cell and the formula, as the canonical writer computes them)."""
        self.volume = cell_volume(self.cell[:3], self.cell[3:])
        reduced, z = self.composition.get_reduced_composition_and_factor()
        z_int = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1
        yield from self._force(f"_cell_volume {format_number(self.volume)}\n")
        yield from self._force(f"_cell_formula_units_Z {z_int}\n")
        yield from self._force(f"_chemical_formula_structural {format_formula(reduced, reduced=True)}\n")
        return State.LOOP_HEADER

    def _rule_loop_header(self) -> Iterator[Any]:
        """LOOP_HEADER: ``loop_`` and the atom-site tags forced; then the rows' bookkeeping starts (lattice, symmetry
        operators, no atom written, every count remaining, no fixed point used)."""
        yield from self._force("loop_\n" + "".join(tag + "\n" for tag in LOOP_TAGS))
        self.lattice = Lattice.from_parameters(*self.cell).matrix
        self.rots, self.trans = symmetry_ops(self.sg, "cif-v2")
        self.positions = space_group_wyckoff(self.sg)
        self.atoms = np.zeros((0, 3))
        self.atom_syms = []
        self.remaining = dict(self.counts)
        self.used_fixed = []
        self.row = 0
        return State.ROW_SITE

    def _rule_row_site(self) -> Iterator[Any]:
        """ROW_SITE: the row's element and label. ``full``: forced - the first formula element with atoms left
        (formula order), END once every count is used up. ``grammar``: the model picks a formula element, or, after
        a complete row, ``<|eos|>`` (then DONE). The label ``El<row>`` forced."""
        t = self.t
        if self.cfg.level == "grammar":
            el_ids = [t.ids(e)[0] for e in self.counts]
            tok = yield from self._choose(el_ids if self.row == 0 else [*el_ids, t.eos])
            if tok == t.eos:
                return State.DONE
            sym = t.element_id[tok]
            self._where = f"row {self.row} ({sym})"
            yield from self._force(f" {sym}{self.row} ")
        else:
            sym = next((s for s in self.counts if self.remaining[s] > 0), None)
            if sym is None:
                return State.END
            self._where = f"row {self.row} ({sym})"
            yield from self._force(f"{sym} {sym}{self.row} ")
        self.symbol = sym
        return State.ROW_POSITION

    def _rule_row_position(self) -> Iterator[Any]:
        """ROW_POSITION: multiplicity, then Wyckoff letter. ``full``: :meth:`_allowed_positions` (counts and fixed
        points, no dead end, token budget, geometry preferences); ``grammar``: any position of the group."""
        if self.cfg.level == "grammar":
            allowed: Sequence[WyckoffPosition] = self.positions
        else:
            allowed = self._allowed_positions(self.sg, self.symbol, self.remaining, self.used_fixed, self.positions, self.row)
        mult_s = yield from self._choose_string(sorted({str(w.multiplicity) for w in allowed}), end=" ")
        letters = [w.letter for w in allowed if str(w.multiplicity) == mult_s]
        letter = yield from self._choose_string(letters, end=" ")
        self.position = next(w for w in self.positions if w.letter == letter)
        return State.ROW_COORDINATES

    def _rule_row_coordinates(self) -> Iterator[Any]:
        """ROW_COORDINATES: x y z in the position's coordinate forms (:meth:`_coordinates`): constants and tied
        coordinates forced, free ones ``0.dddd``; with ``full`` the geometry guard limits the last free one."""
        guard = self.cfg.level != "grammar"
        self.coords = yield from self._coordinates(self.sg, self.position, guard=guard, sym=self.symbol)
        return State.ROW_OCCUPANCY

    def _rule_row_occupancy(self) -> Iterator[Any]:
        """ROW_OCCUPANCY: `` 1`` and the newline forced. ``full``: the row's orbit then counts for the guard, its
        multiplicity against its element's count, a fixed point as used. Next: ROW_SITE."""
        yield from self._force(" 1\n")
        if self.cfg.level != "grammar":
            wp = self.position
            self._add_orbit(np.asarray(self.coords), self.symbol)
            self.remaining[self.symbol] -= wp.multiplicity
            if wp.dof == 0:
                self.used_fixed.append(wp)
        self.row += 1
        return State.ROW_SITE

    def _rule_end(self) -> Iterator[Any]:
        """END: ``<|eos|>`` forced (``full``: after a complete row, when every count is used up)."""
        self._where = "end"
        yield self.t.eos
        return State.DONE

    #: the rule of each state (DONE has none: the machine then allows only ``<|eos|>``)
    _RULES: ClassVar[dict[State, Callable[[CIFConstraint], Iterator[Any]]]] = {
        State.DATA: _rule_data,
        State.FORMULA: _rule_formula,
        State.SPACE_GROUP: _rule_space_group,
        State.CELL: _rule_cell,
        State.COMPUTED: _rule_computed,
        State.LOOP_HEADER: _rule_loop_header,
        State.ROW_SITE: _rule_row_site,
        State.ROW_POSITION: _rule_row_position,
        State.ROW_COORDINATES: _rule_row_coordinates,
        State.ROW_OCCUPANCY: _rule_row_occupancy,
        State.END: _rule_end,
    }

    # -- the formula's helpers -------------------------------------------------------------------------------
    def _formula_options(self, counts: dict[str, int], sym: str | None, count: str) -> list[int]:
        """FORMULA's allowed tokens after the elements ``counts`` and, if ``sym``, element ``sym`` with the digits
        ``count`` of its count so far: the first element; or digits (no leading zero, within ``max_atoms`` and the
        budget) and, once the count has a digit, a later element or the newline (within the budget)."""
        t = self.t
        newline = t.one("\n")
        if sym is None:
            return self._formula_elements(counts, None) + ([newline] if counts else [])
        room = self.cfg.max_atoms - sum(counts.values())
        opts = [t.digit[d] for d in range(10) if (count or d > 0) and int(count + str(d)) <= room and self._formula_fits(counts, [int(count + str(d))], 2)]
        if count:
            # the newline fits whenever the count's last digit did (same tokens in all); checked all the same for a
            # prompt that ends inside its formula (its digits were read without the budget)
            opts += self._formula_elements(counts, sym, int(count)) + ([newline] if self._formula_fits(counts, [int(count)], 1) else [])
        return opts

    def _formula_fits(self, counts: dict[str, int], new: list[int], extra: int) -> bool:
        """Can the formula ``counts`` + ``new``, ending ``extra`` tokens from now (its newline included), still be
        finished within ``max_tokens`` by some space group? Not checked while a prompt is fed: a prompt's formula
        is checked whole, at its newline (a prefix of a formula that fits need not fit by itself)."""
        if not self.cfg.max_tokens or self._feeding_prompt:
            return True
        return self._budget.fits(tuple(sorted([*counts.values(), *new])), self.n_tokens + extra, self.cfg.max_tokens)

    def _formula_elements(self, counts: dict[str, int], after: str | None, pending: int = 0) -> list[int]:
        """Elements that may come next after ``after`` (canonical order: :func:`element_order`); ``pending``: the
        count being written for ``after`` (not in counts yet). One is allowed only if some one-digit count of it
        fits (element, digit, newline: 3 tokens); each digit then keeps a formula that fits when it ends there, so
        no prefix is a dead end."""
        cfg = self.cfg
        total = sum(counts.values()) + pending
        if len(counts) + (1 if pending else 0) >= cfg.max_elements or total >= cfg.max_atoms:
            return []
        base = [pending] if pending else []
        if not any(self._formula_fits(counts, [*base, d], 3) for d in range(1, min(9, cfg.max_atoms - total) + 1)):
            return []
        key = element_order(after) if after else None
        return [
            i for i, el in self.t.element_id.items() if el not in counts and cfg.max_z >= Element(el).Z and (key is None or element_order(el) > key)
        ]

    def _formula_error(self, counts: dict[str, int], tok: int) -> str:
        """Why a prompt's formula token ``tok`` is refused."""
        name = self.t.id_to_token.get(tok, str(tok))
        max_atoms = self.cfg.max_atoms
        if tok in self.t.digit or (tok in self.t.element_id and sum(counts.values()) >= max_atoms):
            return f"formula: more than max_atoms={max_atoms} atoms in the cell (the engine's hard limit) or a count with a leading zero"
        if tok in self.t.element_id:
            return f"formula: {name} repeated, out of canonical order (use format_formula), beyond Z={self.cfg.max_z} or beyond {self.cfg.max_elements} elements"
        return f"formula: unexpected {name!r}"

    # -- the other states' helpers ---------------------------------------------------------------------------
    def _choose_sg(self, groups: Sequence[int]) -> Iterator[Any]:
        """The space-group symbol among ``groups``; while a prompt is fed, any symbol is read and one outside
        ``groups`` raises :class:`ConstraintError` saying why (unrealizable counts, or over ``max_tokens``)."""
        ids = [self.t.vocab[SPACE_GROUP_SYMBOLS[n - 1]] for n in groups]
        if self._feeding_prompt:
            tok = yield _PromptToken(self.t.mask(range(self.t.size)))
            if tok == _PROMPT_END:
                return (yield from self._choose(ids))
            if tok not in self.t.sg_id:
                raise ConstraintError("space group: not a space-group symbol")
            if tok not in ids:
                n = self.t.sg_id[tok]
                formula = format_formula(self.composition)
                key = tuple(sorted(self.counts.values()))
                if not realizable(n, key):
                    raise ConstraintError(f"space group {SPACE_GROUP_SYMBOLS[n - 1]} ({n}) cannot realize {formula} with its Wyckoff multiplicities")
                need = self.formula_end + int(self._budget.cost(n, key) or 0)
                raise ConstraintError(
                    f"space group {SPACE_GROUP_SYMBOLS[n - 1]} ({n}): {formula} needs at least {min_rows(n, key)} atom-site rows, "
                    f"{need} tokens from data_ to <|eos|> in the worst case > max_tokens={self.cfg.max_tokens}; raise max_new_tokens by "
                    f"{need - self.cfg.max_tokens}"
                )
            return tok
        tok = yield from self._choose(ids)
        return tok

    def _volume_window(self, i: int, values: list[float], rules: tuple[str, ...], lo: float, hi: float, n_atoms: int) -> tuple[float, float]:
        """Limit free cell number ``i`` so a cell volume >= min_volume_per_atom * atoms stays reachable: the later
        free lengths at their maximum and free angles at 90 degrees give the largest volume (the allowed set is an
        interval: volume grows with a length and is concave in the cosine of an angle)."""
        need = self.cfg.min_volume_per_atom * n_atoms
        grid = np.round(np.arange(lo, hi + 1e-9, 0.01 if i >= 3 else 0.001), 4)
        cols: list[float | np.ndarray] = [*values, grid]  # the written numbers stay scalars (numpy broadcasts them)
        for k, r in enumerate(rules[i + 1 :], i + 1):
            if r == "free":
                cols.append(self.cfg.length_range[1] if k < 3 else 90.0)
            else:
                cols.append(cols[0] if r == "=a" else float(r))
        a, b, c, al, be, ga = (np.asarray(x, dtype=float) for x in cols)
        ca, cb, cg = (np.cos(np.radians(x)) for x in (al, be, ga))
        s = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
        vols = a * b * c * np.sqrt(np.clip(s, 0.0, None))
        ok = np.flatnonzero(vols >= need)
        if len(ok) == 0:
            raise _DeadEnd(f"cell {_CELL_NAMES[i]}: no value gives {need:.1f} A^3")
        return float(grid[ok[0]]), float(min(hi, grid[ok[-1]]))

    def _allowed_positions(
        self, sg: int, sym: str, remaining: dict[str, int], used_fixed: list[WyckoffPosition], positions: Sequence[WyckoffPosition], row: int
    ) -> list[WyckoffPosition]:
        """Positions row ``row`` may take: multiplicity fits, fixed points unused, remaining counts still realizable
        and, with ``max_tokens``, in rows that fit the tokens left (exact, so never empty); among them, those the geometry guard prefers (fixed point not within
        its closest distance of an atom, a one-parameter line with room left) when there are any."""
        others = [c for s, c in remaining.items() if s != sym and c > 0]
        candidates = []
        for w in positions:
            if w.multiplicity > remaining[sym] or (w.dof == 0 and w in used_fixed):
                continue
            rest, fixed = [remaining[sym] - w.multiplicity, *others], used_fixed + ([w] if w.dof == 0 else [])
            if not self.cfg.max_tokens:
                ok = realizable(sg, rest, fixed)
            else:
                # tokens left for the later rows: this row's rest is exact (multiplicity digits + 26), then EOS
                left = self.cfg.max_tokens - self.n_tokens - len(str(w.multiplicity)) - _ROW_TAIL_TOKENS - 1
                k = min_rows(sg, rest, fixed)
                ok = k is not None and rows_tokens(k, row + 1, sg) <= left
            if ok:
                candidates.append(w)
        if not candidates:
            raise _DeadEnd(f"row for {sym}: no Wyckoff position left (composition or token accounting bug)")
        preferred = [w for w in candidates if not ((w.dof == 0 and self._fixed_blocked(w, sym)) or (w.dof == 1 and not self._line_has_room(sg, w, sym)))]
        self.stats.blocked_letters += len(candidates) - len(preferred)
        return preferred or candidates

    # -- geometry -------------------------------------------------------------------------------------------
    def _sq_dists(self, pts: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Squared Cartesian distances (Angstrom^2, minimum image by fractional rounding, float32: ~1e-6 A) from each
        of ``pts`` (..., 3) to each of ``others`` (N, 3): shape (..., N)."""
        d = pts.astype(np.float32)[..., None, :] - others.astype(np.float32)
        d -= np.rint(d)
        # one (M, 3) @ (3, 3) product: a stacked (..., N, 3) @ (3, 3) runs one small product per leading index
        c = (d.reshape(-1, 3) @ self.lattice.astype(np.float32)).reshape(d.shape)
        return np.einsum("...k,...k->...", c, c)

    def _min_dist(self, pts: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Min Cartesian distance from each of ``pts`` (..., 3) to ``others`` (N, 3); +inf if there are none."""
        if len(others) == 0:
            return np.full(pts.shape[:-1], np.inf)
        return np.sqrt(self._sq_dists(pts, others).min(axis=-1))  # sqrt is monotonic: = min of the distances

    def _closest(self, sym: str, other: str) -> float:
        """Closest distance (Angstrom) the guard aims for between an atom of ``sym`` and one of ``other``."""
        return _closest_pair(sym, other, self.cfg.min_bond_ratio, self.cfg.min_distance)

    def _slack(self, pts: np.ndarray, sym: str, sq: np.ndarray | None = None) -> np.ndarray:
        """Per point of ``pts`` (..., 3) for an atom of ``sym``: min over the atoms written of distance minus the
        closest distance the guard aims for with that atom (Angstrom; >= 0: every pair keeps it); +inf if none.
        ``sq``: the squared distances to the atoms written (:meth:`_sq_dists`), when already computed."""
        if len(self.atoms) == 0:
            return np.full(pts.shape[:-1], np.inf)
        if sq is None:
            sq = self._sq_dists(pts, self.atoms)
        syms = np.asarray(self.atom_syms)
        out = np.full(sq.shape[:-1], np.inf, dtype=np.float32)
        # per element written: sqrt(min d^2) - closest = min(d - closest) exactly (sqrt and "- c" are monotonic)
        for other in dict.fromkeys(self.atom_syms):
            near = np.float32(self._closest(sym, other))
            out = np.minimum(out, np.sqrt(sq[..., syms == other].min(axis=-1)) - near)
        return out

    def _orbit(self, p: np.ndarray) -> np.ndarray:
        """Images of ``p`` under the group's operators, deduplicated in order (an image within 0.02 A of one kept
        before is dropped)."""
        imgs = np.mod(np.einsum("oij,j->oi", self.rots, p) + self.trans, 1.0)
        d = imgs[:, None, :] - imgs[None, :, :]
        d -= np.round(d)
        c = d @ self.lattice
        close = np.einsum("abk,abk->ab", c, c) < 0.02**2
        kept: list[int] = []
        for i in range(len(imgs)):
            if not kept or not close[i, kept].any():
                kept.append(i)
        return imgs[kept]

    def _add_orbit(self, p: np.ndarray, sym: str = "") -> None:
        orbit = self._orbit(p)
        self.atoms = np.vstack([self.atoms, orbit])
        self.atom_syms += [sym] * len(orbit)

    def _fixed_blocked(self, w: WyckoffPosition, sym: str = "") -> bool:
        p = np.asarray(w.trans, dtype=float)
        return bool(self._slack(p[None, :], sym)[0] < 0)

    def _stabilizer_mask(self, sg: int, wp: WyckoffPosition) -> np.ndarray:
        """Operators of the position's site-symmetry group (:func:`_stabilizer`)."""
        return _stabilizer(sg, wp.letter)

    def _valid_values(self, sg: int, wp: WyckoffPosition, written: dict[int, float], coord: int, sym: str = "", fallback: bool = True) -> np.ndarray:
        """Boolean mask over the 10,000 values 0.0000..0.9999 of free coordinate ``coord`` (all other coordinates of
        the row known or tied to it) for an atom of ``sym``: True where the orbit keeps its closest distance
        (:meth:`_closest`: ``min_bond_ratio`` x the expected bond length, at least ``min_distance``) to every atom
        and to its own images. Distances are computed every 0.001 and a value is kept only if its 0.001-block clears
        the bound by the block's length (conservative: never lets a closer value through). With ``fallback``, where
        no value keeps it: ``min_distance`` (``bond_fallbacks``), then ``hard_distance`` (``soft_failures``)."""
        grid = np.arange(1000) / 1000.0

        def pos(tval: float) -> np.ndarray:
            vals = wyckoff_coords(sg, wp.letter, {**written, coord: tval}, decimals=12)
            return np.asarray([v if v is not None else 0.0 for v in vals])

        p0 = pos(0.0)
        slope = _affine_slope(sg, wp, coord)
        margin = 0.001 * float(np.linalg.norm(slope @ self.lattice))  # Angstrom an atom moves within one block
        pts = (p0[None, :] + grid[:, None] * slope[None, :]) % 1.0
        if len(self.atoms):
            sq = self._sq_dists(pts, self.atoms)
            dist = np.sqrt(sq.min(axis=-1)) - margin
            slack = self._slack(pts, sym, sq) - margin
        else:
            dist = slack = np.full(len(pts), np.inf)
        stab = self._stabilizer_mask(sg, wp)
        rots, trans = self.rots[~stab], self.trans[~stab]
        if len(rots):
            img = self._image_distance(pts, rots, trans, slope)
            dist = np.minimum(dist, img)
            slack = np.minimum(slack, img - self._closest(sym, sym))
        score = np.minimum(dist, self._min_dist(pts, self._reserved_points()) - margin)
        hard = score >= self.cfg.hard_distance
        soft = hard & (slack >= 0)
        if not (soft.any() or not fallback):
            kept = hard & (dist >= self.cfg.min_distance)
            if kept.any():
                self.stats.bond_fallbacks += 1
                return np.repeat(kept, 10)
            self.stats.soft_failures += 1
            if hard.any():
                soft = hard
            else:
                # last resort: the block farthest from everything, as long as nothing merges on parsing (0.02 A)
                best = float(score.max())
                soft = score >= best - 1e-6 if best >= 0.03 else np.zeros_like(soft)
        return np.repeat(soft, 10)

    def _image_distance(self, pts: np.ndarray, rots: np.ndarray, trans: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """Per grid point (G, 3), the lower bound over its 0.001-block of the distance (Angstrom) from the atom to its
        images under ``rots``/``trans``. Image o moves against the atom by ``(R_o - 1) @ slope`` per unit of the
        coordinate, so each image gets its own margin: a mirror's image whose distance does not depend on the
        coordinate gets none (a single worst-case margin of twice the atom's motion turned a 0.17 A mirror image on
        a 75 A axis into a dead end)."""
        # image minus atom, (G, ops, 3): (R - 1) p + t, in float32 like _min_dist
        a = (rots - np.eye(3)).astype(np.float32).transpose(2, 0, 1).reshape(3, -1)  # [j, o*3 + i] = (R_o - 1)[i, j]
        d = (pts.astype(np.float32) @ a).reshape(len(pts), len(rots), 3) + trans.astype(np.float32)
        d -= np.rint(d)
        c = (d.reshape(-1, 3) @ self.lattice.astype(np.float32)).reshape(d.shape)
        rel = (np.einsum("oij,j->oi", rots, slope) - slope) @ self.lattice  # (ops, 3) Angstrom per unit
        margin = 0.001 * np.linalg.norm(rel, axis=1).astype(np.float32)
        return (np.sqrt(np.einsum("gok,gok->go", c, c)) - margin[None, :]).min(axis=1)

    def _reserved_points(self) -> np.ndarray:
        """Every image of the fixed points not used yet (free atoms keep ``hard_distance`` from them)."""
        pts = [_fixed_orbit(self.sg, w.letter) for w in space_group_wyckoff(self.sg) if w.dof == 0 and w not in self.used_fixed]
        return np.vstack(pts) if pts else np.zeros((0, 3))

    def _not_degenerate(self, sg: int, wp: WyckoffPosition, written: dict[int, float], coord: int, later: list[int]) -> np.ndarray:
        """Values of free coordinate ``coord`` (not the row's last) for which the orbit's own images stay
        ``hard_distance`` apart for generic values of the ``later`` free coordinates (e.g. y = 0 on a mirror
        y -> -y would collapse a general position onto the plane, whatever z is)."""
        grid = np.arange(1000) / 1000.0
        base = {**written, coord: 0.0, **{j: 0.0 for j in later}}
        p0 = np.asarray([v if v is not None else 0.0 for v in wyckoff_coords(sg, wp.letter, base, decimals=12)])
        stab = self._stabilizer_mask(sg, wp)
        rots, trans = self.rots[~stab], self.trans[~stab]
        if not len(rots):
            return np.ones(len(grid), dtype=bool)
        rng = np.random.default_rng(len(self.atoms) + coord)
        slope = _affine_slope(sg, wp, coord)
        ok = np.zeros(len(grid), dtype=bool)
        for _ in range(3):
            q = p0 + sum(rng.random() * _affine_slope(sg, wp, j) for j in later)
            pts = (q[None, :] + grid[:, None] * slope[None, :]) % 1.0
            ok |= self._image_distance(pts, rots, trans, slope) >= self.cfg.hard_distance
        return np.repeat(ok, 10) if ok.any() else np.ones(10_000, dtype=bool)

    def _line_has_room(self, sg: int, wp: WyckoffPosition, sym: str = "") -> bool:
        plan = coordinate_plan(sg, wp.letter)
        coord = next(i for i, step in enumerate(plan) if step[0] == "free")
        return bool(self._valid_values(sg, wp, {}, coord, sym, fallback=False).any())

    def _coordinates(self, sg: int, wp: WyckoffPosition, guard: bool = True, sym: str = "") -> Iterator[Any]:
        plan = coordinate_plan(sg, wp.letter)
        free = [i for i, step in enumerate(plan) if step[0] == "free"]
        written: dict[int, float] = {}
        for i in range(3):
            if i > 0:
                yield from self._force(" ")
            self._where = f"{self._where.split(' coord')[0]} coord {'xyz'[i]}"
            if plan[i][0] == "free":
                yield from self._force("0.")
                mask = None
                if not guard:
                    pass
                elif i != free[-1]:
                    mask = self._not_degenerate(sg, wp, written, i, [j for j in free if j > i])
                    if mask.all():
                        mask = None
                if guard and i == free[-1]:
                    mask = self._valid_values(sg, wp, written, i, sym)
                    if not mask.all():
                        self.stats.guarded_rows += 1
                    if not mask.any():
                        raise _DeadEnd(f"{self._where}: no value keeps {self.cfg.hard_distance} A")
                digits = ""
                for k in range(4):
                    opts = []
                    for d in range(10):
                        if mask is None:
                            opts.append(self.t.digit[d])
                            continue
                        start = int((digits + str(d)).ljust(4, "0"))
                        span = 10 ** (3 - k)
                        if mask[start : start + span].any():
                            opts.append(self.t.digit[d])
                    tok = yield from self._choose(opts)
                    digits += str(self.t.digit.index(tok))
                written[i] = int(digits) / 10_000.0
            else:
                vals = wyckoff_coords(sg, wp.letter, written)
                yield from self._force(format_number(vals[i]))
        final = wyckoff_coords(sg, wp.letter, written)
        return tuple(float(v) for v in final)  # type: ignore[arg-type]


@lru_cache(maxsize=65536)
def _closest_pair(a: str, b: str, ratio: float, min_distance: float) -> float:
    """Closest distance (Angstrom) between atoms of elements ``a`` and ``b``: ``ratio`` x their expected bond length,
    at least ``min_distance``; ``min_distance`` alone for H (CrystaLLM bounds bonds to H only from above), an
    unknown element or radius, or ``ratio`` 0."""
    exp = expected_bond_length(a, b) if ratio > 0 and "H" not in (a, b) and a and b else None
    return max(min_distance, ratio * exp) if exp else min_distance


@lru_cache(maxsize=4096)
def _stabilizer(sg: int, letter: str) -> np.ndarray:
    """Operators of the site-symmetry group of Wyckoff position ``letter`` of space group ``sg``: they fix a
    *generic* point of the position (their image of an atom is the atom itself, not a neighbour). Two random
    points, fractional tolerance 1e-9: lattice-independent, so cached per position."""
    wp = next(w for w in space_group_wyckoff(sg) if w.letter == letter)
    rots, trans = symmetry_ops(sg, "cif-v2")
    rng = np.random.default_rng(12345)
    keep = np.ones(len(rots), dtype=bool)
    for _ in range(2):
        p = wp.project(rng.random(3))
        imgs = np.einsum("oij,j->oi", rots, p) + trans - p
        imgs -= np.round(imgs)
        keep &= np.abs(imgs).max(axis=1) < 1e-9
    keep.flags.writeable = False
    return keep


@lru_cache(maxsize=2048)
def _fixed_orbit(sg: int, letter: str) -> np.ndarray:
    """Fractional images (deduplicated) of fixed point ``letter`` of space group ``sg``."""
    wp = next(w for w in space_group_wyckoff(sg) if w.letter == letter)
    rots, trans = symmetry_ops(sg, "cif-v2")
    imgs = np.mod(rots @ np.asarray(wp.trans) + trans, 1.0)
    imgs = np.round(imgs, 8) % 1.0
    return np.unique(imgs, axis=0)


def _affine_slope(sg: int, wp: WyckoffPosition, coord: int) -> np.ndarray:
    """d(position)/d(value of free coordinate ``coord``): the coefficients of its parameter, times its sign."""
    plan = coordinate_plan(sg, wp.letter)
    _, coef, _, param = plan[coord]
    sign = coef[param]
    return np.asarray([p[1][param] * sign for p in plan], dtype=float)


def _overlap(a: float, b: float, lo: float, hi: float, closed: bool = False) -> bool:
    """Does [a, b) (or [a, b] with ``closed``) meet [lo, hi]?"""
    return a <= hi and (b >= lo if closed else b > lo)


class _DeadEnd(Exception):
    """No token is allowed (internal: turned into ``stats.dead_end`` + EOS, or a ConstraintError for a prompt)."""
