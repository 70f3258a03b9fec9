"""Constraint engine: a per-sequence state machine over token ids that only lets a model write consistent v2 text.

No model code here: a :class:`CIFConstraint` is fed the tokens of a sequence (prompt first, then each sampled
token) and answers, before every step, which token ids may come next (:meth:`CIFConstraint.allowed`: a boolean
mask over the vocabulary, or a single forced id). Engines turn that into a logits mask (HF ``LogitsProcessor``,
vLLM logits processor), so the same rules hold on any engine and with any model.

The machine is a generator that walks the canonical v2 layout (:mod:`cifllm.cif.canonical`) in order; at each
token it yields either a forced id or a set of allowed ids, and receives the chosen id:

====================  ==========================================================================================
state                 rule
====================  ==========================================================================================
formula (``data_``)   elements in electronegativity order (each once), integer counts without leading zeros, at
                      most ``max_atoms`` atoms and ``max_elements`` elements; a prompt's formula is checked the
                      same way (unknown element / too many atoms -> :class:`ConstraintError` before sampling)
space group           only symbols whose Wyckoff multiplicities can realize the counts (a small knapsack over
                      the positions with free parameters, usable any number of times, and the fixed points,
                      usable once each: :func:`realizable`); Int_Tables number forced
cell                  numbers in the fixed format (``%.4f``) within ``length_range`` / ``angle_range``; the
                      crystal system's equalities and fixed angles forced (a=b, a=b=c, 90, 120); the last free
                      cell number is limited so the volume is >= ``min_volume_per_atom`` x atoms; ``_cell_volume``,
                      ``_cell_formula_units_Z`` and ``_chemical_formula_structural`` forced
loop header           forced
each row              element forced (formula order, until its count is used up), label forced; multiplicity and
                      letter: only positions whose multiplicity fits the element's remaining count, fixed points
                      not used yet and not blocked, and such that the remaining counts stay realizable (no dead
                      end); coordinates: constants and tied coordinates forced, free ones sampled as ``0.dddd``;
                      occupancy ``1`` forced
geometry guard        the digits of a row's last free coordinate are limited to values whose orbit keeps every
                      atom >= ``min_distance`` (0.5 Angstrom) from every other (the orbit's own images included);
                      a fixed point closer than that to an atom already written is blocked
end                   ``<|eos|>`` only after a complete row and when every count is used up
====================  ==========================================================================================

The guard masks digits instead of rejecting a completed row and resampling it: logits processors (vLLM's
included) cannot take back tokens, and masking is exact at the 4-decimal resolution of the text. Counted per
sequence (:class:`ConstraintStats`): rows where the guard removed values, letters blocked by geometry, and dead
ends (no allowed token: possible only when the free coordinates written before a row's last one leave it no room;
the sequence is then ended and the sample is kept with reason ``constraint_dead_end``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice

from cifllm.cif.canonical import (
    LOOP_TAGS,
    SPACE_GROUP_SYMBOLS,
    _num,
    _symmetry_ops,
    cell_volume,
    format_formula,
)
from cifllm.cif.canonical import (
    _el_order as _el_key,
)
from cifllm.cif.wyckoff import WyckoffPosition, coordinate_plan, space_group_wyckoff, wyckoff_coords
from cifllm.errors import CifllmError

__all__ = [
    "ConstraintConfig",
    "ConstraintError",
    "ConstraintStats",
    "CIFConstraint",
    "TokenTable",
    "crystal_system_rules",
    "realizable",
    "realizable_space_groups",
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
    #: every free cell number is limited so that volume / atoms >= this stays reachable (Angstrom^3; the corpus
    #: filter's bound)
    min_volume_per_atom: float = 1.5
    #: allowed cell lengths (Angstrom) and angles (degrees)
    length_range: tuple[float, float] = (1.0, 100.0)
    angle_range: tuple[float, float] = (30.0, 150.0)
    #: most atoms in the conventional cell / distinct elements
    max_atoms: int = 200
    max_elements: int = 8
    #: heaviest element (atomic number) the formula may use: the corpus drops everything beyond Pu
    max_z: int = 94
    #: ``full``: everything below; ``grammar``: only the grammar and the computed fields (formula order, Int_Tables,
    #: cell equalities, volume, Z, formula, labels, multiplicity from the letter, Wyckoff coordinate forms), rows of any
    #: formula element at any position and EOS after any row - the ablation without composition accounting/geometry
    level: str = "full"
    #: tokens the whole CIF (from ``data_`` to ``<|eos|>``) may take, 0 = unbounded. The engines set it from
    #: ``max_new_tokens``; the formula is then limited to ``(max_tokens - 210) // 40`` atoms (a header takes at most
    #: 210 tokens and a row at most 40, one row per atom in the worst case), so every sample can finish in budget.
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.level not in ("full", "grammar"):
            raise ValueError(f"constraint level must be 'full' or 'grammar', got {self.level!r}")

    def atom_limit(self) -> int:
        if self.max_tokens <= 0:
            return self.max_atoms
        return max(0, min(self.max_atoms, (self.max_tokens - 210) // 40))


@dataclass
class ConstraintStats:
    """Per-sequence counters: ``guarded_rows`` (rows whose last free coordinate lost values to the geometry guard),
    ``blocked_letters`` (fixed points refused because an atom is too close), ``dead_end`` (reason, or empty)."""

    guarded_rows: int = 0
    blocked_letters: int = 0
    soft_failures: int = 0
    dead_end: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "guarded_rows": self.guarded_rows,
            "blocked_letters": self.blocked_letters,
            "soft_failures": self.soft_failures,
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
            if t.isalpha() and t[0].isupper() and len(t) <= 2:
                try:
                    el = Element(t)
                except ValueError:
                    continue
                if el.symbol == t:  # not pymatgen's isotope aliases D and T: they read as H, so D10H4 is H14
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


# ----------------------------------------------------------------------------------------------------------------
# the machine


class _Choice:
    """A set of allowed token ids (``mask``) offered to the model."""

    __slots__ = ("mask",)

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask


class CIFConstraint:
    """State machine of one sequence. Feed the prompt with :meth:`feed_prompt` (raises :class:`ConstraintError`
    for a prompt the grammar cannot continue), then alternate :meth:`allowed` and :meth:`advance`."""

    def __init__(self, table: TokenTable, config: ConstraintConfig | None = None) -> None:
        self.t = table
        self.cfg = config or ConstraintConfig()
        self.stats = ConstraintStats()
        self.done = False
        self._feeding_prompt = False
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

    # -- helpers --------------------------------------------------------------------------------------------
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

    def _pick(self, ids: Sequence[int], why) -> Iterator[Any]:
        """Like :meth:`_choose`; while the prompt is fed, a token outside ``ids`` raises ConstraintError(why(tok))."""
        if self._feeding_prompt:
            tok = yield _Choice(np.ones(self.t.size, dtype=bool))
            if tok not in ids:
                raise ConstraintError(why(tok))
            return tok
        tok = yield from self._choose(ids)
        return tok

    def _choose_string(self, options: Iterable[str]) -> Iterator[Any]:
        """Let the model pick one of ``options`` (strings), token by token. Returns the string."""
        seqs = {o: self.t.ids(o) for o in options}
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

    # -- the grammar ----------------------------------------------------------------------------------------
    def _program(self) -> Iterator[Any]:
        try:
            yield from self._body()
        except _DeadEnd as exc:
            if self._feeding_prompt:
                raise ConstraintError(f"the prompt cannot be continued ({exc})") from None
            self.stats.dead_end = str(exc)
            yield self.t.eos
        self.done = True

    def _body(self) -> Iterator[Any]:
        t, cfg = self.t, self.cfg
        self._where = "data_"
        yield from self._force("data_")
        # formula
        self._where = "formula"
        counts: dict[str, int] = {}
        newline = t.one("\n")
        max_atoms = cfg.atom_limit()

        def element_opts(after: str | None, pending: int = 0) -> list[int]:
            """Elements that may come next; ``pending``: the count being written for ``after`` (not in counts yet)."""
            if len(counts) + (1 if pending else 0) >= cfg.max_elements or sum(counts.values()) + pending >= max_atoms:
                return []
            key = _el_key(after) if after else None
            return [
                i for i, el in t.element_id.items() if el not in counts and cfg.max_z >= Element(el).Z and (key is None or _el_key(el) > key)
            ]

        def formula_error(tok: int) -> str:
            name = t.id_to_token.get(tok, str(tok))
            if tok in t.digit or (tok in t.element_id and sum(counts.values()) >= max_atoms):
                return (
                    f"formula: more than {max_atoms} atoms in the cell (the engine's limit: max_atoms={cfg.max_atoms}, "
                    f"and {cfg.max_tokens or 'unbounded'} tokens allow {max_atoms}; raise max_new_tokens) or a count with a leading zero"
                )
            if tok in t.element_id:
                return f"formula: {name} repeated, out of canonical order (use format_formula), beyond Z={cfg.max_z} or beyond {cfg.max_elements} elements"
            return f"formula: unexpected {name!r}"

        carry: int | None = None
        last: str | None = None
        while True:
            if carry is None:
                opts = element_opts(last) + ([newline] if counts else [])
                tok = yield from self._pick(opts, formula_error)
            else:
                tok, carry = carry, None
            if tok == newline:
                break
            sym = t.element_id[tok]
            c = ""
            while True:
                room = max_atoms - sum(counts.values())
                opts = [t.digit[d] for d in range(10) if (c or d > 0) and int(c + str(d)) <= room]
                if c:
                    opts += element_opts(sym, int(c)) + [newline]
                tok = yield from self._pick(opts, formula_error)
                if tok in t.digit:
                    c += str(t.digit.index(tok))
                    continue
                break
            counts[sym] = int(c)
            last = sym
            if tok == newline:
                break
            carry = tok
        self.counts = dict(counts)
        comp = Composition(counts)
        n_atoms = sum(counts.values())
        # space group
        self._where = "space group"
        yield from self._force("_symmetry_space_group_name_H-M ")
        groups = realizable_space_groups(tuple(sorted(counts.values()))) if cfg.level == "full" else tuple(range(1, 231))
        sg_tok = yield from self._choose_sg(groups)
        sg = t.sg_id[sg_tok]
        self.sg = sg
        yield from self._force(f"\n_symmetry_Int_Tables_number {sg}\n")
        # cell
        rules = crystal_system_rules(sg)
        names = ("a", "b", "c", "alpha", "beta", "gamma")
        tags = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
        values: list[float] = []
        for i, (tag, rule) in enumerate(zip(tags, rules)):
            self._where = f"cell {names[i]}"
            yield from self._force(f"{tag} ")
            if rule == "free":
                lo, hi = cfg.length_range if i < 3 else cfg.angle_range
                lo, hi = self._volume_window(i, values, rules, lo, hi, n_atoms)
                v = yield from self._number(lo, hi, 3)
            elif rule == "=a":
                v = values[0]
                yield from self._force(_num(v))
            else:
                v = float(rule)
                yield from self._force(_num(v))
            values.append(v)
            yield from self._force("\n")
        abc, angles = tuple(values[:3]), tuple(values[3:])
        self.volume = cell_volume(abc, angles)
        reduced, z = comp.get_reduced_composition_and_factor()
        z_int = int(round(z)) if abs(z - round(z)) < 1e-6 and round(z) >= 1 else 1
        yield from self._force(f"_cell_volume {_num(self.volume)}\n")
        yield from self._force(f"_cell_formula_units_Z {z_int}\n")
        yield from self._force(f"_chemical_formula_structural {format_formula(reduced, reduced=True)}\n")
        yield from self._force("loop_\n" + "".join(tag + "\n" for tag in LOOP_TAGS))
        # rows
        self.lattice = Lattice.from_parameters(*abc, *angles).matrix
        self.rots, self.trans = _symmetry_ops(sg, "cif-v2")
        self.atoms = np.zeros((0, 3))
        remaining = dict(counts)
        used_fixed: list[WyckoffPosition] = []
        self.used_fixed = used_fixed
        positions = space_group_wyckoff(sg)
        row = 0
        if cfg.level == "grammar":
            yield from self._grammar_rows(sg, list(counts), positions)
            return
        for sym in list(counts):
            while remaining[sym] > 0:
                self._where = f"row {row} ({sym})"
                yield from self._force(f"{sym} {sym}{row} ")
                allowed = self._allowed_positions(sg, sym, remaining, used_fixed, positions)
                mult_s = yield from self._choose_string(sorted({str(w.multiplicity) for w in allowed}))
                yield from self._force(" ")
                letters = [w.letter for w in allowed if str(w.multiplicity) == mult_s]
                letter = yield from self._choose_string(letters)
                wp = next(w for w in positions if w.letter == letter)
                yield from self._force(" ")
                coords = yield from self._coordinates(sg, wp)
                yield from self._force(" 1\n")
                self._add_orbit(np.asarray(coords))
                remaining[sym] -= wp.multiplicity
                if wp.dof == 0:
                    used_fixed.append(wp)
                row += 1
        self._where = "end"
        yield t.eos

    def _grammar_rows(self, sg: int, elements: list[str], positions: Sequence[WyckoffPosition]) -> Iterator[Any]:
        """``level="grammar"``: well-formed rows with forced labels, multiplicities (from the letter) and Wyckoff
        coordinate forms, elements of the formula, but no composition accounting and no geometry guard; the model
        decides when to stop (after a complete row)."""
        t = self.t
        el_ids = [t.ids(e)[0] for e in elements]
        row = 0
        tok = yield from self._choose(el_ids)
        while True:
            sym = t.element_id[tok]
            self._where = f"row {row} ({sym})"
            yield from self._force(f" {sym}{row} ")
            mult_s = yield from self._choose_string(sorted({str(w.multiplicity) for w in positions}))
            yield from self._force(" ")
            letter = yield from self._choose_string([w.letter for w in positions if str(w.multiplicity) == mult_s])
            wp = next(w for w in positions if w.letter == letter)
            yield from self._force(" ")
            yield from self._coordinates(sg, wp, guard=False)
            yield from self._force(" 1\n")
            row += 1
            tok = yield from self._choose([*el_ids, t.eos])
            if tok == t.eos:
                return

    def _choose_sg(self, groups: Sequence[int]) -> Iterator[Any]:
        ids = [self.t.vocab[SPACE_GROUP_SYMBOLS[n - 1]] for n in groups]
        if self._feeding_prompt:
            tok = yield _Choice(self.t.mask(range(self.t.size)))
            if tok not in self.t.sg_id:
                raise ConstraintError("space group: not a space-group symbol")
            if tok not in ids:
                n = self.t.sg_id[tok]
                raise ConstraintError(
                    f"space group {SPACE_GROUP_SYMBOLS[n - 1]} ({n}) cannot realize {format_formula(Composition(self.counts))} with its Wyckoff multiplicities"
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
        cols = [np.full(len(grid), v) for v in values] + [grid]
        for k, r in enumerate(rules[i + 1 :], i + 1):
            if r == "free":
                best = self.cfg.length_range[1] if k < 3 else 90.0
                cols.append(np.full(len(grid), best))
            else:
                cols.append(cols[0] if r == "=a" else np.full(len(grid), float(r)))
        a, b, c, al, be, ga = cols
        ca, cb, cg = (np.cos(np.radians(x)) for x in (al, be, ga))
        s = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
        vols = a * b * c * np.sqrt(np.clip(s, 0.0, None))
        ok = np.flatnonzero(vols >= need)
        if len(ok) == 0:
            raise _DeadEnd(f"cell {('a', 'b', 'c', 'alpha', 'beta', 'gamma')[i]}: no value gives {need:.1f} A^3")
        return float(grid[ok[0]]), float(min(hi, grid[ok[-1]]))

    def _allowed_positions(
        self, sg: int, sym: str, remaining: dict[str, int], used_fixed: list[WyckoffPosition], positions: Sequence[WyckoffPosition]
    ) -> list[WyckoffPosition]:
        """Positions the row may take: multiplicity fits, fixed points unused, remaining counts still realizable
        (exact, so never empty); among them, those the geometry guard prefers (fixed point not within
        ``min_distance`` of an atom, a one-parameter line with room left) when there are any."""
        others = [c for s, c in remaining.items() if s != sym and c > 0]
        candidates = [
            w
            for w in positions
            if w.multiplicity <= remaining[sym]
            and not (w.dof == 0 and w in used_fixed)
            and realizable(sg, [remaining[sym] - w.multiplicity, *others], used_fixed + ([w] if w.dof == 0 else []))
        ]
        if not candidates:
            raise _DeadEnd(f"row for {sym}: no Wyckoff position left (composition accounting bug)")
        preferred = [w for w in candidates if not ((w.dof == 0 and self._fixed_blocked(w)) or (w.dof == 1 and not self._line_has_room(sg, w)))]
        self.stats.blocked_letters += len(candidates) - len(preferred)
        return preferred or candidates

    # -- geometry -------------------------------------------------------------------------------------------
    def _min_dist(self, pts: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Min Cartesian distance (Angstrom, minimum image by fractional rounding) from each of ``pts`` (..., 3) to
        ``others`` (N, 3); +inf if there are none."""
        if len(others) == 0:
            return np.full(pts.shape[:-1], np.inf)
        d = (pts[..., None, :] - others).astype(np.float32)
        d -= np.round(d)
        c = d @ self.lattice.astype(np.float32)
        return np.sqrt(np.einsum("...k,...k->...", c, c).min(axis=-1))

    def _orbit(self, p: np.ndarray) -> np.ndarray:
        imgs = np.mod(np.einsum("oij,j->oi", self.rots, p) + self.trans, 1.0)
        kept: list[np.ndarray] = []
        for im in imgs:
            if kept:
                d = np.asarray(kept) - im
                d -= np.round(d)
                if np.min(np.linalg.norm(d @ self.lattice, axis=1)) < 0.02:
                    continue
            kept.append(im)
        return np.asarray(kept)

    def _add_orbit(self, p: np.ndarray) -> None:
        self.atoms = np.vstack([self.atoms, self._orbit(p)])

    def _fixed_blocked(self, w: WyckoffPosition) -> bool:
        p = np.asarray(w.trans, dtype=float)
        return bool(self._min_dist(p[None, :], self.atoms)[0] < self.cfg.min_distance)

    def _stabilizer_mask(self, sg: int, wp: WyckoffPosition) -> np.ndarray:
        """Operators of the position's site-symmetry group: they fix a *generic* point of the position (their
        image of an atom is the atom itself, not a neighbour)."""
        rng = np.random.default_rng(12345)
        keep = np.ones(len(self.rots), dtype=bool)
        for _ in range(2):
            p = wp.project(rng.random(3))
            imgs = np.einsum("oij,j->oi", self.rots, p) + self.trans - p
            imgs -= np.round(imgs)
            keep &= np.linalg.norm(imgs @ self.lattice, axis=1) < 1e-6
        return keep

    def _valid_values(self, sg: int, wp: WyckoffPosition, written: dict[int, float], coord: int, fallback: bool = True) -> np.ndarray:
        """Boolean mask over the 10,000 values 0.0000..0.9999 of free coordinate ``coord`` (all other coordinates of
        the row known or tied to it): True where the orbit keeps ``min_distance`` to every atom and to its own
        images. Distances are computed every 0.001 and a value is kept only if its 0.001-block clears the bound by
        the block's length (conservative: never lets a closer value through)."""
        grid = np.arange(1000) / 1000.0

        def pos(tval: float) -> np.ndarray:
            vals = wyckoff_coords(sg, wp.letter, {**written, coord: tval}, decimals=12)
            return np.asarray([v if v is not None else 0.0 for v in vals])

        p0 = pos(0.0)
        slope = _affine_slope(sg, wp, coord)
        margin = 0.001 * float(np.linalg.norm(slope @ self.lattice))  # Angstrom an atom moves within one block
        pts = (p0[None, :] + grid[:, None] * slope[None, :]) % 1.0
        dist = self._min_dist(pts, self.atoms) - margin
        stab = self._stabilizer_mask(sg, wp)
        rots, trans = self.rots[~stab], self.trans[~stab]
        if len(rots):
            dist = np.minimum(dist, self._image_distance(pts, rots, trans, slope))
        score = np.minimum(dist, self._min_dist(pts, self._reserved_points()) - margin)
        hard = score >= self.cfg.hard_distance
        soft = hard & (dist >= self.cfg.min_distance)
        if not (soft.any() or not fallback):
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
        imgs = np.einsum("oij,gj->goi", rots, pts) + trans  # (G, ops, 3)
        d = (imgs - pts[:, None, :]).astype(np.float32)
        d -= np.round(d)
        c = d @ self.lattice.astype(np.float32)
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

    def _line_has_room(self, sg: int, wp: WyckoffPosition) -> bool:
        plan = coordinate_plan(sg, wp.letter)
        coord = next(i for i, step in enumerate(plan) if step[0] == "free")
        return bool(self._valid_values(sg, wp, {}, coord, fallback=False).any())

    def _coordinates(self, sg: int, wp: WyckoffPosition, guard: bool = True) -> Iterator[Any]:
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
                    mask = self._valid_values(sg, wp, written, i)
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
                yield from self._force(_num(vals[i]))
        final = wyckoff_coords(sg, wp.letter, written)
        return tuple(float(v) for v in final)  # type: ignore[arg-type]


@lru_cache(maxsize=2048)
def _fixed_orbit(sg: int, letter: str) -> np.ndarray:
    """Fractional images (deduplicated) of fixed point ``letter`` of space group ``sg``."""
    wp = next(w for w in space_group_wyckoff(sg) if w.letter == letter)
    rots, trans = _symmetry_ops(sg, "cif-v2")
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


@dataclass
class ConstraintSummary:
    """Counts over many sequences (for sample records and benchmarks)."""

    sequences: int = 0
    guarded_rows: int = 0
    blocked_letters: int = 0
    dead_ends: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
