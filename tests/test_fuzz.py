"""Fuzz suite (seeded, deterministic): damaged CIFs through data preparation, ``check_sample``, ``cifllm evaluate`` and
the tokenizer. Every input ends with a result or a named reason, nothing escapes, nothing hangs (> 10 s), and no
kept record silently disagrees with its own stated formula. The default run is bounded (well under 60 s on 2 CPU
cores); ``-m slow`` runs a larger one. Reports: ``benchmarks/bench_fuzz.py``."""

from __future__ import annotations

import random

import pytest

from cifllm import fuzz

HANG_S = 10.0


def _assert_clean(rep: fuzz.FuzzReport) -> None:
    j = rep.to_json()
    assert j["crashes"] == 0, j["crash_examples"]
    assert j["hangs"] == 0, j["hang_examples"]
    assert j["no_reason"] == 0, j["no_reason_examples"]
    assert sum(rep.outcomes.values()) == rep.tried


def test_mutations_are_deterministic_and_cover_every_mutator():
    seeds = fuzz.seed_cifs()
    a = [fuzz.mutate(t, random.Random(7)) for _, t in seeds]
    b = [fuzz.mutate(t, random.Random(7)) for _, t in seeds]
    assert a == b
    rng = random.Random(0)
    for name, m in fuzz.MUTATORS.items():
        out = m(seeds[0][1], rng)
        assert isinstance(out, str)
        assert out != seeds[0][1] or name in ("duplicate_tag", "unknown_element"), name  # may hit an equal value


def test_fuzz_prep_record_path():
    rep = fuzz.fuzz_prep(100, seed=1, hang_s=HANG_S)
    _assert_clean(rep)
    assert rep.extra["silent_corruption"] == 0, rep.extra["silent_corruption_examples"]
    assert rep.outcomes["kept"] > 0 and len(rep.outcomes) >= 5


def test_fuzz_check_sample():
    rep = fuzz.fuzz_checks(30, seed=1, hang_s=HANG_S)
    _assert_clean(rep)
    assert rep.outcomes["valid_all"] > 0


def test_fuzz_evaluate_cli():
    rep = fuzz.fuzz_evaluate(len(fuzz.GARBAGE_KINDS), seed=1, hang_s=HANG_S)
    _assert_clean(rep)
    assert set(rep.outcomes) == {"ok", "user_error"}  # wrong field types are refused, everything else gets verdicts


def test_fuzz_tokenizer():
    rep = fuzz.fuzz_tokenizer(60, seed=1, hang_s=HANG_S)
    _assert_clean(rep)
    assert rep.extra["round_trip_mismatches"] == 0, rep.extra["round_trip_mismatch_examples"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_fuzz_large(seed):
    for rep in (fuzz.fuzz_prep(600, seed=seed), fuzz.fuzz_checks(200, seed=seed), fuzz.fuzz_evaluate(30, seed=seed), fuzz.fuzz_tokenizer(600, seed=seed)):
        _assert_clean(rep)
        assert rep.extra.get("silent_corruption", 0) == 0
