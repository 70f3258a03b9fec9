"""Seeded, deterministic fuzzing of every path that reads untrusted input: data preparation (one record),
``check_sample``, ``cifllm evaluate`` on a garbage ``samples.jsonl``, every CLI reader of a user's JSON / YAML / text
file on damaged files (deep nesting, a folder, binary, bad syntax: :func:`fuzz_input_files`), and the tokenizer.

A mutation generator (:data:`MUTATORS`) damages real-looking CIFs: truncation, byte flips, line deletions, duplicated
tags, huge / NaN / negative / zero numbers, degenerate angles, unknown elements, absurd row counts, binary, empty,
non-UTF-8, partial and tiny occupancies. Each driver returns a :class:`FuzzReport`: inputs tried, crashes (an
exception escaped, or a check reported ``check_crashed``), hangs (an input over ``hang_s`` seconds), outcomes without a
reason, outcomes by reason and mutator, and the slowest input. Used by ``tests/test_fuzz.py`` and
``benchmarks/bench_fuzz.py``; the drivers go through the public functions only (``process_record``,
``structure_to_text``, ``check_sample``, ``cifllm.cli.main``, the tokenizer), never a fixed row layout.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import resource
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifllm.cif import structure_to_text
from cifllm.cli import main
from cifllm.core.records import EVAL_DIR, METRICS_FILE, SAMPLES_FILE
from cifllm.data.filters import FilterSettings, Reject, formula_disagreement, process_record, stated_formula
from cifllm.data.readers import RawRecord
from cifllm.evaluation.checks import check_sample
from cifllm.tokenization import build_tokenizer
from cifllm.utils.limits import map_with_time_limit

__all__ = ["FuzzReport", "MUTATORS", "seed_structures", "seed_cifs", "mutate", "fuzz_prep", "fuzz_checks", "fuzz_evaluate", "fuzz_input_files", "fuzz_tokenizer", "peak_rss_mb"]

_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?")


@dataclass
class FuzzReport:
    """Outcome counts of one fuzzed path. ``crashes``/``hangs``/``no_reason`` list (mutator, seed, detail)."""

    path: str
    tried: int = 0
    crashes: list[list[str]] = field(default_factory=list)
    hangs: list[list[str]] = field(default_factory=list)
    no_reason: list[list[str]] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    by_mutator: Counter = field(default_factory=Counter)
    max_seconds: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def note(self, mutator: str, seed: str, outcome: str, seconds: float, hang_s: float) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1
        self.by_mutator[mutator] += 1
        if seconds > self.max_seconds:
            self.max_seconds, self.slowest = seconds, f"{mutator} on {seed}"
        if seconds > hang_s:
            self.hangs.append([mutator, seed, f"{seconds:.1f} s"])

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "inputs": self.tried,
            "crashes": len(self.crashes),
            "hangs": len(self.hangs),
            "no_reason": len(self.no_reason),
            "crash_examples": self.crashes[:10],
            "hang_examples": self.hangs[:10],
            "no_reason_examples": self.no_reason[:10],
            "outcomes": dict(self.outcomes.most_common()),
            "inputs_by_mutator": dict(sorted(self.by_mutator.items())),
            "max_seconds_per_input": round(self.max_seconds, 3),
            "slowest_input": self.slowest,
            "seconds": round(self.seconds, 2),
            **self.extra,
        }


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its finished child processes (Linux ``ru_maxrss``, kB)."""
    return {
        "self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


# ------------------------------------------------------------------------------------------------ seeds


def seed_structures() -> list[tuple[str, Any]]:
    """Named seed crystals: ordered binaries/ternaries of several symmetries, a 13-atom intermetallic, a disordered
    alloy and a hydrate-like hydrogen compound (lattice constants roughly physical, Angstrom)."""
    from pymatgen.core import Lattice, Structure

    s = [
        ("NaCl", Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
        ("SrTiO3", Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])),
        ("TiO2", Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])),
        ("ZnO", Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])),
        (
            "SmMn6Sn6",
            Structure.from_spacegroup(
                "P6/mmm", Lattice.hexagonal(5.53, 9.02), ["Sm", "Mn", "Sn", "Sn", "Sn"], [[0, 0, 0], [0.5, 0, 0.246], [1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.5], [0, 0, 0.338]]
            ),
        ),
        ("CuAu", Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.85), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])),
        ("LiOH", Structure.from_spacegroup("P4/nmm", Lattice.tetragonal(3.55, 4.33), ["Li", "O", "H"], [[0.75, 0.25, 0], [0.25, 0.25, 0.194], [0.25, 0.25, 0.40]])),
    ]
    return s


def seed_cifs() -> list[tuple[str, str]]:
    """Seed CIF files as a user would bring them: pymatgen P1 CIFs, symmetrized CIFs with operators, and an
    experimental-style CIF (labels only, ``_chemical_formula_sum`` per formula unit)."""
    from pymatgen.io.cif import CifWriter

    out = []
    for name, s in seed_structures():
        out.append((f"{name}-p1", str(CifWriter(s))))
        out.append((f"{name}-sym", str(CifWriter(s, symprec=0.1))))
    out.append(
        (
            "LiOH-exp",
            "data_LiOH\n_chemical_formula_sum 'H Li O'\n_cell_length_a 3.549\n_cell_length_b 3.549\n_cell_length_c 4.334\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 4/n m m'\n"
            "_symmetry_Int_Tables_number 129\nloop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            "_atom_site_occupancy\nLi1 0.75 0.25 0 1\nO1 0.25 0.25 0.194 1\n",  # H unlocated, as in many X-ray structures
        )
    )
    return out


# ------------------------------------------------------------------------------------------------ mutators


def _lines(t: str) -> list[str]:
    return t.splitlines()


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _sub_number(t: str, rng: random.Random, value: str) -> str:
    spots = list(_NUMBER.finditer(t))
    if not spots:
        return t + value
    m = rng.choice(spots)
    return t[: m.start()] + value + t[m.end() :]


def _tag_lines(t: str) -> list[int]:
    return [k for k, ln in enumerate(_lines(t)) if ln.strip().startswith("_")]


def _row_lines(t: str) -> list[int]:
    """Data rows of loops (lines after a loop's tags that are not tags, keywords or comments)."""
    lines, rows, in_loop = _lines(t), [], False
    for k, ln in enumerate(lines):
        s = ln.strip()
        if s.lower().startswith("loop_"):
            in_loop = True
        elif s.startswith("_"):
            continue
        elif in_loop and s and not s.startswith(("#", ";")) and not s.lower().startswith("data_"):
            rows.append(k)
    return rows


def _atom_rows(t: str) -> list[int]:
    rows = _row_lines(t)
    return [k for k in rows if len(_lines(t)[k].split()) >= 4 and not _lines(t)[k].strip().startswith("'")] or rows


def _set_last_field(t: str, rng: random.Random, value: Callable[[random.Random], str], all_rows: bool) -> str:
    lines = _lines(t)
    rows = _atom_rows(t)
    if not rows:
        return t
    for k in rows if all_rows else [rng.choice(rows)]:
        parts = lines[k].split()
        lines[k] = " ".join([*parts[:-1], value(rng)])
    return _join(lines)


def _truncate(t: str, rng: random.Random) -> str:
    return t[: rng.randrange(len(t) + 1)]


def _byte_flip(t: str, rng: random.Random) -> str:
    b = bytearray(t.encode("utf-8", errors="replace"))
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return b.decode("utf-8", errors="replace")


def _delete_lines(t: str, rng: random.Random) -> str:
    lines = _lines(t)
    for _ in range(rng.randint(1, 3)):
        if lines:
            del lines[rng.randrange(len(lines))]
    return _join(lines)


def _duplicate_tag(t: str, rng: random.Random) -> str:
    lines, tags = _lines(t), _tag_lines(t)
    if len(tags) < 2:
        return t
    a, b = rng.sample(tags, 2)
    if rng.random() < 0.5:
        lines.insert(a + 1, lines[a])  # the tag twice
    else:
        lines[b] = lines[a]  # another tag replaced by a copy
    return _join(lines)


def _huge(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["1e300", "1e999", "123456789012345678901234567890", "9" * 400]))


def _nan(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["nan", "NaN", "inf", "-inf", "?", "."]))


def _negative(t: str, rng: random.Random) -> str:
    spots = list(_NUMBER.finditer(t))
    if not spots:
        return t
    m = rng.choice(spots)
    return t[: m.start()] + "-" + m.group().lstrip("+-") + t[m.end() :]


def _zero(t: str, rng: random.Random) -> str:
    return _sub_number(t, rng, rng.choice(["0", "0.0", "0.0000", "1e-30"]))


def _degenerate_angles(t: str, rng: random.Random) -> str:
    choice = rng.choice([("120", "120", "120"), ("120", "120", "119.99"), ("0", "0", "0"), ("180", "90", "90"), ("60", "60", "179.9"), ("1", "1", "1"), ("90", "90", "0.001")])
    lines = _lines(t)
    for k, ln in enumerate(lines):
        for tag, v in zip(("alpha", "beta", "gamma"), choice, strict=True):
            if ln.strip().startswith(f"_cell_angle_{tag}"):
                lines[k] = f"_cell_angle_{tag} {v}"
    return _join(lines)


def _unknown_element(t: str, rng: random.Random) -> str:
    lines, rows = _lines(t), _atom_rows(t)
    if not rows:
        return t
    k = rng.choice(rows)
    parts = lines[k].split()
    new = rng.choice(["Xx", "Qq", "Uuo", "D", "Og", "Ts", "X", "1", "Na+", "Cl-"])
    lines[k] = " ".join([new if re.fullmatch(r"[A-Z][a-z]?", p) else p for p in parts[:1]] + parts[1:]) if parts else lines[k]
    return _join(lines)


def _absurd_rows(t: str, rng: random.Random) -> str:
    lines, rows = _lines(t), _atom_rows(t)
    if not rows:
        return t
    n = rng.choice([300, 2000, 20000])
    src = lines[rows[-1]].split()
    extra = []
    for i in range(n):
        parts = list(src)
        nums = [j for j, p in enumerate(parts) if _NUMBER.fullmatch(p)]
        for j in nums[-4:-1] if len(nums) >= 4 else nums:
            parts[j] = f"{rng.random():.5f}"
        if len(parts) > 1 and not _NUMBER.fullmatch(parts[1]):
            parts[1] = f"{parts[1]}x{i}"
        extra.append(" ".join(parts))
    return _join(lines[: rows[-1] + 1] + extra + lines[rows[-1] + 1 :])


def _binary(t: str, rng: random.Random) -> str:
    pos = rng.randrange(len(t) + 1)
    return t[:pos] + "\x00" * rng.randint(1, 16) + "".join(chr(rng.randrange(1, 32)) for _ in range(8)) + t[pos:]


def _empty(t: str, rng: random.Random) -> str:
    return rng.choice(["", " ", "\n\n", "data_\n", "loop_\n"])


def _non_utf8(t: str, rng: random.Random) -> str:
    b = t.encode()
    pos = rng.randrange(len(b) + 1)
    bad = bytes(rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xE9]) for _ in range(rng.randint(1, 6)))
    return (b[:pos] + bad + b[pos:]).decode("utf-8", errors="replace")  # what the readers do with such bytes


def _partial_occupancy(t: str, rng: random.Random) -> str:
    return _set_last_field(t, rng, lambda r: f"{r.uniform(0.05, 0.95):.3f}", all_rows=rng.random() < 0.5)


def _tiny_occupancy(t: str, rng: random.Random) -> str:
    return _set_last_field(t, rng, lambda r: r.choice(["1e-30", "0.0001", "1e-5", "0.00001", "0"]), all_rows=rng.random() < 0.5)


#: name -> mutation(text, rng) -> damaged text
MUTATORS: dict[str, Callable[[str, random.Random], str]] = {
    "truncate": _truncate,
    "byte_flip": _byte_flip,
    "delete_lines": _delete_lines,
    "duplicate_tag": _duplicate_tag,
    "huge_number": _huge,
    "nan_number": _nan,
    "negative_number": _negative,
    "zero_number": _zero,
    "degenerate_angles": _degenerate_angles,
    "unknown_element": _unknown_element,
    "absurd_rows": _absurd_rows,
    "binary": _binary,
    "empty": _empty,
    "non_utf8": _non_utf8,
    "partial_occupancy": _partial_occupancy,
    "tiny_occupancy": _tiny_occupancy,
}


def mutate(text: str, rng: random.Random) -> tuple[str, str]:
    """(mutator name, damaged text); 1 in 4 inputs get two mutations (the name joins both)."""
    names = sorted(MUTATORS)
    name = rng.choice(names)
    out = MUTATORS[name](text, rng)
    if rng.random() < 0.25:
        second = rng.choice(names)
        out, name = MUTATORS[second](out, rng), f"{name}+{second}"
    return name, out


def _cases(seeds: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        sname, text = seeds[i % len(seeds)]
        mname, damaged = mutate(text, rng)
        cases.append((mname, sname, damaged))
    return cases


# ------------------------------------------------------------------------------------------------ drivers


def fuzz_prep(n: int = 200, seed: int = 0, hang_s: float = 10.0, time_limit_s: float = 30.0) -> FuzzReport:
    """(a) The per-record preparation path (:func:`cifllm.data.filters.process_record`) under the prep time limit.

    Outcome ``kept`` or the reject reason. Also counted: ``silent_corruption`` - a kept record whose composition
    differs from its file's own ``_chemical_formula_sum`` (hydrogen exception as in the filter)."""
    rep = FuzzReport("prep: process_record")
    settings = FilterSettings(keep_partial=False)
    cases = _cases(seed_cifs(), n, seed)
    corrupt: list[list[str]] = []
    t0 = time.perf_counter()

    def one(case: tuple[str, str, str]) -> tuple[Any, float]:
        t = time.perf_counter()
        r = process_record(RawRecord("fuzz", "fuzz", 0, case[1], cif=case[2]), settings)
        return r, time.perf_counter() - t

    for i, res in map_with_time_limit(one, cases, time_limit_s, on_failure=lambda c, reason, d: (reason, d)):
        mname, sname, text = cases[i]
        if isinstance(res[0], str):  # the time limit or an escaped exception
            outcome, dt = res[0], time_limit_s if res[0] == "timeout" else 0.0
            if res[0] != "timeout":
                rep.crashes.append([mname, sname, str(res[1])[:200]])
        else:
            r, dt = res
            if isinstance(r, Reject):
                outcome = r.reason
                if not r.reason:
                    rep.no_reason.append([mname, sname, r.detail[:200]])
            else:
                outcome = "kept"
                stated = stated_formula(text)
                if stated is not None:
                    from pymatgen.core import Composition

                    why = formula_disagreement(stated, Composition(r.reduced_formula), True) if r.reduced_formula else "no formula"
                    if why and not ("H" in stated and "H" not in r.elements):
                        corrupt.append([mname, sname, why])
        rep.note(mname, sname, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    rep.extra["silent_corruption"] = len(corrupt)
    rep.extra["silent_corruption_examples"] = corrupt[:10]
    return rep


def _canonical_seeds() -> list[tuple[str, str]]:
    out = []
    for name, s in seed_structures():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append((name, structure_to_text(s)))
            out.append((f"{name}-p1", structure_to_text(s, mode="p1")))
    return out


def fuzz_checks(n: int = 60, seed: int = 0, hang_s: float = 10.0, time_limit_s: float = 30.0) -> FuzzReport:
    """(b) :func:`cifllm.evaluation.checks.check_sample` on damaged canonical texts (and 1 in 5 undamaged)."""
    rep = FuzzReport("check_sample")
    seeds = _canonical_seeds()
    by_name = dict(seeds)
    cases = [(("none", c[1], by_name[c[1]]) if k % 5 == 4 else c) for k, c in enumerate(_cases(seeds, n, seed))]
    t0 = time.perf_counter()

    def one(text: str) -> tuple[Any, float]:
        t = time.perf_counter()
        v = check_sample(text)
        return v, time.perf_counter() - t

    for i, res in map_with_time_limit(one, [c[2] for c in cases], time_limit_s, on_failure=lambda c, reason, d: (reason, d)):
        mname, sname, _ = cases[i]
        if isinstance(res[0], str):
            outcome, dt = res[0], time_limit_s if res[0] == "timeout" else 0.0
            if res[0] != "timeout":
                rep.crashes.append([mname, sname, str(res[1])[:200]])
        else:
            v, dt = res
            outcome = "valid_all" if v.valid_all else v.reason
            crashed = [f"{k}: {c.detail}" for k, c in v.checks.items() if c.reason == "check_crashed"]
            if crashed:
                rep.crashes.append([mname, sname, crashed[0][:200]])
            if not v.valid_all and not v.reason:
                rep.no_reason.append([mname, sname, "not valid_all, empty reason"])
            if any(c.ok is False and not c.reason for c in v.checks.values()):
                rep.no_reason.append([mname, sname, "a failed check without reason"])
        rep.note(mname, sname, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


GARBAGE_KINDS = ("mutated_texts", "bad_json_lines", "wrong_types", "binary", "empty", "not_objects", "huge_text", "deep_json", "mixed")


def _garbage_samples(rng: random.Random, texts: list[str], kind: str) -> tuple[str, str]:
    """(kind, samples.jsonl content) of one garbage file of ``kind`` (one of :data:`GARBAGE_KINDS`)."""
    def good() -> dict[str, Any]:
        return {"sample_id": f"s{rng.randrange(10**6)}", "cif_text": rng.choice(texts), "n_tokens": rng.randrange(500), "finished": True, "prompt_meta": {}}

    recs: list[str] = []
    if kind == "mutated_texts":
        for _ in range(rng.randint(1, 4)):
            r = good()
            r["cif_text"] = mutate(r["cif_text"], rng)[1]
            recs.append(json.dumps(r))
    elif kind == "bad_json_lines":
        recs = [json.dumps(good()), "{not json", '{"cif_text": "data_', json.dumps(good())[:-5]]
    elif kind == "wrong_types":
        r = good()
        field_, value = rng.choice([("prompt_meta", "target"), ("n_tokens", "many"), ("n_tokens", 3.5), ("cif_text", 42), ("sample_index", "x"), ("finished", "yes"), ("prompt_meta", [1, 2]), ("n_tokens", True)])
        r[field_] = value
        recs = [json.dumps(good()), json.dumps(r)]
    elif kind == "binary":
        return kind, "".join(chr(rng.randrange(256)) for _ in range(300)) + "\x00\n"
    elif kind == "empty":
        return kind, rng.choice(["", "\n", "   \n\n"])
    elif kind == "not_objects":
        recs = [json.dumps(x) for x in ([1, 2], "text", None, 3.5)]
    elif kind == "huge_text":
        r = good()
        r["cif_text"] = r["cif_text"] * 200
        recs = [json.dumps(r)]
    elif kind == "deep_json":  # nested past the parsers' recursion limit, as a whole line or inside a field
        depth = rng.randint(1_000, 20_000)
        recs = [json.dumps(good()), "[" * depth + "]" * depth, '{"cif_text": "x", "prompt_meta": ' + "{\"a\": " * depth + "1" + "}" * depth + "}"]
    else:
        recs = [json.dumps(good()), "garbage", json.dumps({"cif_text": None}), json.dumps({})]
    return kind, "\n".join(recs) + "\n"


def fuzz_evaluate(n: int = 6, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(c) ``cifllm evaluate`` (in process, ``workers=0``) on garbage ``samples.jsonl`` files. Outcome ``ok`` (exit 0,
    ``metrics.json`` with one verdict per record) or ``user_error`` (exit 2, one line on stderr); anything else, or an
    exception, is a crash."""
    rep = FuzzReport("cifllm evaluate")
    rng = random.Random(seed)
    texts = [t for _, t in _canonical_seeds()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            kind, content = _garbage_samples(rng, texts, GARBAGE_KINDS[(i + seed) % len(GARBAGE_KINDS)])
            run = Path(tmp) / f"run{i}"
            run.mkdir()
            (run / SAMPLES_FILE).write_text(content, errors="replace")
            err = io.StringIO()
            t = time.perf_counter()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(["evaluate", "--no-progress", f"samples={run}", "workers=0", "time_limit_s=10", "report=false", "uniqueness=true"])
            except BaseException as exc:  # noqa: BLE001 - the point is to see anything escape
                rc = -1
                rep.crashes.append([kind, f"file {i}", f"{type(exc).__name__}: {str(exc)[:200]}"])
            dt = time.perf_counter() - t
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            if rc == 0:
                n_rec = sum(1 for ln in (run / EVAL_DIR / "checks.jsonl").read_text().splitlines() if ln.strip())
                outcome = "ok" if (run / EVAL_DIR / METRICS_FILE).is_file() else "ok_without_metrics"
                rep.extra.setdefault("verdicts_written", 0)
                rep.extra["verdicts_written"] += n_rec
            elif rc == 2:
                errors = [ln for ln in lines if ln.startswith("cifllm evaluate: error: ")]
                outcome = "user_error" if len(errors) == 1 and "Traceback" not in err.getvalue() else "user_error_not_one_line"
                if outcome != "user_error":
                    rep.no_reason.append([kind, f"file {i}", err.getvalue()[-200:]])
            else:
                outcome = f"exit_{rc}"
                if rc != -1:
                    rep.crashes.append([kind, f"file {i}", err.getvalue()[-200:]])
            rep.note(kind, f"file {i}", outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


#: damaged input files a stage reads (issue 31 item 8): JSON/YAML nested past the parsers' recursion limit, a folder
#: where a file is expected, binary and non-UTF-8 content, invalid syntax, an empty file
INPUT_FILE_KINDS = ("deep_yaml", "deep_flow_yaml", "deep_json", "folder", "binary", "non_utf8", "bad_syntax", "empty", "alias_loop")
#: (stage argv with {file}, suffix of the file): every place the CLI reads a JSON / YAML / text file a user names
INPUT_FILE_READERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("data", "--config", "{file}"), ".yaml"),
    (("evaluate", "--config", "{file}"), ".yaml"),
    (("sample", "--config", "{file}"), ".yaml"),
    (("bench", "--config", "{file}"), ".yaml"),
    (("data", "registry={dir}", "--list"), ".yaml"),
    (("sample", "model=default", "prompt_file={file}", "out={out}"), ".jsonl"),
    (("sample", "model=default", "prompt_file={file}", "out={out}"), ".txt"),
    (("evaluate", "samples={file}", "out={out}", "workers=0", "report=false", "--no-progress"), ".jsonl"),
)


def _damaged_file(path: Path, kind: str, rng: random.Random) -> None:
    """Write a damaged input file of ``kind`` (:data:`INPUT_FILE_KINDS`) at ``path`` (a folder for ``folder``)."""
    depth = rng.randint(1_000, 20_000)
    if kind == "folder":
        path.mkdir()
        return
    data: bytes
    if kind == "deep_yaml":
        data = ("seed:\n  " + "- " * depth + "1\n").encode()  # block sequences nested on one line
    elif kind == "deep_flow_yaml":
        data = ("seed: " + "[" * depth + "]" * depth + "\n").encode()
    elif kind == "deep_json":
        data = ("[" * depth + "]" * depth + "\n").encode()
    elif kind == "binary":
        data = bytes(rng.randrange(256) for _ in range(200)) + b"\x00"
    elif kind == "non_utf8":
        data = "composition: caf\xe9\n".encode("latin-1")
    elif kind == "bad_syntax":
        data = rng.choice([b"seed: [1, 2\n", b"{not json\n", b"a: b: c\n  - x\n"])
    elif kind == "alias_loop":
        data = b"seed: &a [*a]\n"
    else:
        data = b""
    path.write_bytes(data)


def fuzz_input_files(n: int = 0, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(e) Every CLI reader of a user's file (:data:`INPUT_FILE_READERS`) on damaged files (:data:`INPUT_FILE_KINDS`),
    in process. Outcome ``ok`` (exit 0) or ``user_error`` (exit 2, one line on stderr naming the file); an escaped
    exception, another exit code, a traceback or an error line that does not name the file is a crash / no_reason.
    ``n`` = 0: every (reader, kind) pair once; else ``n`` distinct seeded pairs."""
    rep = FuzzReport("cifllm input files")
    rng = random.Random(seed)
    pairs = [(r, k) for r in INPUT_FILE_READERS for k in INPUT_FILE_KINDS]
    if n:
        pairs = rng.sample(pairs, min(n, len(pairs)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, ((argv, suffix), kind) in enumerate(pairs):
            case = Path(tmp) / f"case{i}"
            case.mkdir()
            reg = case / "registry"
            reg.mkdir()
            target = reg / f"entry{suffix}" if any("{dir}" in a for a in argv) else case / f"input{suffix}"
            _damaged_file(target, kind, rng)
            args = [a.format(file=target, dir=reg, out=case / "out") for a in argv]
            label = f"{argv[0]} {argv[1].split('=')[0]}"
            err = io.StringIO()
            t = time.perf_counter()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(args)
            except BaseException as exc:  # noqa: BLE001 - the point is to see anything escape
                rc = -1
                rep.crashes.append([kind, label, f"{type(exc).__name__}: {str(exc)[:200]}"])
            dt = time.perf_counter() - t
            text = err.getvalue()
            errors = [ln for ln in text.splitlines() if ln.startswith(f"cifllm {argv[0]}: error: ")]
            if rc == 0:
                outcome = "ok"
            elif rc == 2 and len(errors) == 1 and "Traceback" not in text:
                outcome = "user_error"
                if kind != "empty" and str(target) not in errors[0]:  # an empty config is valid: a later error is about something else
                    rep.no_reason.append([kind, label, f"error does not name {target.name}: {errors[0][-200:]}"])
            else:
                outcome = f"exit_{rc}"
                if rc != -1:
                    rep.crashes.append([kind, label, text[-300:]])
            rep.note(kind, label, outcome, dt, hang_s)
    rep.seconds = time.perf_counter() - t0
    return rep


def fuzz_tokenizer(n: int = 300, seed: int = 0, hang_s: float = 10.0) -> FuzzReport:
    """(d) The tokenizer on damaged canonical texts and random strings: encode/decode never raise; text of printable
    ASCII round-trips exactly (``decode(encode(t)) == t``); other characters become ``<|unk|>``."""
    rep = FuzzReport("tokenizer")
    tok = build_tokenizer()
    unk = tok.token_to_id("<|unk|>")
    rng = random.Random(seed)
    seeds = _canonical_seeds()
    mismatches: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(n):
        sname, text = seeds[i % len(seeds)]
        if i % 3 == 2:
            mname, t = "random_chars", "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x3000), 10])) for _ in range(rng.randint(0, 400)))
        else:
            mname, t = mutate(text, rng)
        t1 = time.perf_counter()
        try:
            ids = tok.encode(t, add_special_tokens=False).ids
            back = tok.decode(ids, skip_special_tokens=False)
            ascii_ok = all(32 <= ord(c) < 127 or c == "\n" for c in t)
            if ascii_ok and back != t:
                mismatches.append([mname, sname, repr(t[:80])])
                outcome = "round_trip_mismatch"
            else:
                outcome = "exact" if back == t else ("unk" if unk in ids else "changed_non_ascii")
        except Exception as exc:
            rep.crashes.append([mname, sname, f"{type(exc).__name__}: {str(exc)[:200]}"])
            outcome = "crash"
        rep.note(mname, sname, outcome, time.perf_counter() - t1, hang_s)
    rep.seconds = time.perf_counter() - t0
    rep.extra["round_trip_mismatches"] = len(mismatches)
    rep.extra["round_trip_mismatch_examples"] = mismatches[:10]
    return rep
