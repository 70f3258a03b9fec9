"""A user's own downstream data for the transfer sweep (``downstream=<file>``): CSV / JSONL of CIF texts with a
measured property, read into the same fixed splits as the project's SuperCon3D set; one-line errors naming the file
and row for a bad one; the sweep end to end on such a file."""

from __future__ import annotations

import csv
import json

import pytest


def _rows(structures):
    """(id, pymatgen CIF text, property = sites per cell, split) for the prototype crystals: plain pymatgen CIFs, not
    the project's canonical text (a file the project has never seen)."""
    from pymatgen.io.cif import CifWriter

    out = []
    for i, s in enumerate(structures):
        split = ("train", "train", "train", "val", "test")[i % 5]
        out.append({"id": f"proto-{i}", "cif": str(CifWriter(s)), "sites": len(s), "split": split})
    return out


def _write_csv(path, rows, fields=("id", "cif", "sites", "split")):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _cfg(**kw):
    from cifllm.scaling.downstream import DownstreamConfig

    return DownstreamConfig(**{"property": "sites", "log_target": False, **kw})


def test_csv_and_jsonl_files_give_canonical_rows_in_their_splits(structures, tmp_path):
    from cifllm.cif import structure_to_text
    from cifllm.scaling.downstream import load_property_file

    rows = _rows(structures)
    data = load_property_file(_write_csv(tmp_path / "d.csv", rows), _cfg())
    assert (len(data.train), len(data.val), len(data.test)) == (30, 9, 9)
    assert data.dropped == {} and data.target == "sites" and data.origin.endswith("d.csv")
    by_id = {r["id"]: r for part in (data.train, data.val, data.test) for r in part}
    assert by_id["proto-0"]["text"] == structure_to_text(structures[0])  # rewritten as canonical text
    assert by_id["proto-7"]["y"] == len(structures[7]) and by_id["proto-3"] in data.val
    # the same rows as JSON lines, without a split column: a split hashed on the reduced formula
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({k: r[k] for k in ("cif", "sites")}) + "\n" for r in rows))
    hashed = load_property_file(jl, _cfg(val_fraction=0.2, test_fraction=0.2))
    parts = {s: {r["reduced_formula"] for r in getattr(hashed, s)} for s in ("train", "val", "test")}
    assert sum(len(getattr(hashed, s)) for s in parts) == 48 and all(parts.values())
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    assert {r["id"] for r in hashed.train} <= {f"row{i}" for i in range(1, 49)}


def test_supercon3d_setup_is_one_instance_of_the_file_format(tmp_path, structures):
    """The corpus route (SuperCon3D-style provenance records) written as a file reads back as the same rows."""
    from cifllm.cif import format_formula, structure_to_text
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.scaling.downstream import (
        DownstreamConfig,
        load_downstream,
        load_property_file,
        load_property_set,
        write_property_file,
    )

    rows = []
    for i, s in enumerate(structures[:20]):
        text = structure_to_text(s)
        prov = [{"dataset": "supercon3d", "id": str(i), "split": ("train", "val", "test", "train")[i % 4], "properties": {"tc": float(i % 7)}}]
        rows.append(CorpusRow(text=text, reduced_formula=format_formula(s.composition, reduced=True), elements=[e.symbol for e in s.composition.elements],
                              n_sites=len(s), sg_number=1, n_tokens=100, sources=["supercon3d"], source_ids=[f"sc:{i}"], properties={}, year=None,
                              provenance=prov, split="train"))
    corpus = write_corpus(rows, tmp_path / "corpus")
    cfg = DownstreamConfig()
    from_corpus = load_property_set(corpus, cfg)
    path = write_property_file(from_corpus, tmp_path / "supercon3d.jsonl")
    from_file = load_downstream("unused", DownstreamConfig(file=str(path)))
    assert load_property_file(path, cfg).test == from_file.test
    for s in ("train", "val", "test"):
        assert getattr(from_file, s) == getattr(from_corpus, s), s


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "sites"} for r in rows], "row 1: no column 'sites'"),
        (lambda rows: [*rows[:4], {**rows[4], "cif": "data_x\n_cell_length_a 3\nloop_\n_atom_site_label\nFe1\n"}, *rows[5:]], "row 5 (id proto-4): unparsable CIF"),
        (lambda rows: [*rows[:2], {**rows[2], "sites": "12 K"}, *rows[3:]], "row 3 (id proto-2): sites = '12 K' is not a number"),
        (lambda rows: [*rows[:6], {**rows[6], "split": "holdout"}, *rows[7:]], "row 7 (id proto-6): split = 'holdout' is not one of train/val/test"),
        (lambda rows: [*rows[:8], {**rows[8], "id": "proto-1"}, *rows[9:]], "row 9: id 'proto-1' repeats row 2"),
        (lambda rows: [*rows[:3], {**rows[3], "sites": "inf"}, *rows[4:]], "row 4 (id proto-3): sites = 'inf' is not finite"),
    ],
)
def test_bad_file_rows_fail_with_file_and_row(structures, tmp_path, edit, expected):
    from cifllm.scaling.downstream import DownstreamError, load_property_file

    rows = edit(_rows(structures))
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DownstreamError) as exc:
        load_property_file(path, _cfg())
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg


def test_bad_files_csv_header_negative_log_target_empty_values(structures, tmp_path):
    from cifllm.scaling.downstream import DownstreamError, load_property_file

    rows = _rows(structures)
    with pytest.raises(DownstreamError, match=r"bad\.csv: row 1: no column 'cif' .*columns: id, structure, sites, split"):
        _write_csv(tmp_path / "bad.csv", [{**r, "structure": r["cif"]} for r in rows], fields=("id", "structure", "sites", "split"))
        load_property_file(tmp_path / "bad.csv", _cfg())
    neg = [*rows[:1], {**rows[1], "sites": -3}, *rows[2:]]
    with pytest.raises(DownstreamError, match=r"row 2 \(id proto-1\): sites = -3 is negative.*log_target=false"):
        load_property_file(_write_csv(tmp_path / "neg.csv", neg), _cfg(log_target=True))
    with pytest.raises(DownstreamError, match="unknown file type '.txt'"):
        (tmp_path / "d.txt").write_text("x")
        load_property_file(tmp_path / "d.txt", _cfg())
    with pytest.raises(DownstreamError, match="no such downstream file"):
        load_property_file(tmp_path / "missing.csv", _cfg())
    # empty values are dropped and counted, not errors
    blank = [{**r, "sites": ""} if i in (0, 5) else r for i, r in enumerate(rows)]
    data = load_property_file(_write_csv(tmp_path / "blank.csv", blank), _cfg())
    assert data.dropped == {"no_sites": 2} and len(data.train) + len(data.val) + len(data.test) == 46


def test_downstream_shorthand_and_cli_exit_2(structures, tmp_path, capsys):
    from cifllm.cli import main
    from cifllm.scaling.sweep import load_scaling_config

    cfg = load_scaling_config(None, ["downstream=my.csv", "downstream.property=sites"])
    assert cfg.downstream.file == "my.csv" and cfg.downstream.property == "sites"
    rows = _rows(structures)
    bad = _write_csv(tmp_path / "bad.csv", [*rows[:3], {**rows[3], "sites": "n/a"}, *rows[4:]])
    code = main(["scaling", "--task", "tc_top", f"downstream={bad}", "downstream.property=sites", f"out={tmp_path / 'o'}", "corpus=unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{bad}: row 4 (id proto-3): sites = 'n/a' is not a number" in err[0]


def test_transfer_sweep_on_a_downstream_file(structures, tmp_path):
    """The sweep end to end with the downstream set from a CSV (the pool: computed-source rows of a corpus)."""
    from cifllm.cif import format_formula, structure_to_text
    from cifllm.data.corpus import CorpusRow, write_corpus
    from cifllm.scaling.sweep import load_scaling_config, run_sweep
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    rows = []
    for k, scale in enumerate((0.97, 1.0, 1.03)):
        for i, s0 in enumerate(structures):
            s = s0.copy()
            s.scale_lattice(s.volume * scale**3)
            text = structure_to_text(s)
            rows.append(CorpusRow(text=text, reduced_formula=format_formula(s.composition, reduced=True), elements=[e.symbol for e in s.composition.elements],
                                  n_sites=len(s), sg_number=1, n_tokens=len(tok.encode(text, add_special_tokens=False).ids), sources=["mp_20"],
                                  source_ids=[f"mp:{k}-{i}"], properties={}, year=None, provenance=[{"dataset": "mp_20", "id": f"{k}-{i}"}],
                                  split="val" if k == 2 else "train"))
    corpus = write_corpus(rows, tmp_path / "corpus")
    down = _rows(structures[::2])  # 24 rows; their formulas leave the pool (downstream_overlap)
    f = _write_csv(tmp_path / "mine.csv", down)
    over = {
        "corpus": str(corpus), "out": str(tmp_path / "sweep"), "sizes": [8, 16, 24], "full_pool": True, "repeats": 1, "val_rows": 12, "generative_metric": False,
        "pretrain_overrides": ["max_position_embeddings=256", "batch_size=4", "precision=fp32", "logging_steps=50"],
        "early_stop": {"epochs_cap": 3, "min_steps": 4, "max_steps_cap": 8, "eval_epochs": 1, "eval_min_steps": 2, "eval_max_steps": 4, "patience": 1, "warmup_steps": 2},
        "downstream": {"file": str(f), "property": "sites", "unit": "sites/cell", "log_target": False, "epochs": 2, "patience": 2},
    }
    out = run_sweep(load_scaling_config(None, over))
    pool = json.loads((out / "pool.json").read_text())
    assert pool["downstream"]["origin"] == str(f) and pool["downstream"]["unit"] == "sites/cell"
    assert pool["dropped"]["downstream_overlap"] > 0
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert pool["pool_train"] > 24
    assert sorted(r["size"] for r in runs if r["kind"] == "run") == [8, 16, 24, pool["pool_train"]]  # full_pool: the whole pool last
    report = (out / "REPORT.md").read_text()
    assert "measured sites" in report and "sites MAE (sites/cell)" in report


def test_shipped_converged_sweep_config_loads():
    from pathlib import Path

    from cifllm.scaling.protocol import plan_steps
    from cifllm.scaling.sweep import load_scaling_config, pretrain_config_for

    cfg = load_scaling_config(Path(__file__).resolve().parents[1] / "eval" / "scaling_converged.yaml")
    assert len(cfg.sizes) + cfg.full_pool >= 7 and cfg.repeats >= 3 and max(cfg.sizes) < 35_000 and cfg.early_stop.lr_schedule == "constant"
    per_step = pretrain_config_for(cfg).batch_size
    plans = [plan_steps(n, per_step, cfg.early_stop) for n in cfg.sizes]
    assert all(p.warmup_steps == cfg.early_stop.warmup_steps for p in plans)
    assert all(p.epochs_at_cap >= 10 for p in plans)  # the safety bound leaves every size at least 10 passes
