"""Data preparation on in-process inputs: every drop counted with a reason, duplicates merged with provenance."""

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cifllm.config import load_config
from cifllm.data.corpus import load_corpus
from cifllm.data.download import content_sha256, download_file, verify_dataset
from cifllm.data.filters import FilterSettings
from cifllm.data.prep import PrepConfig, prepare_corpus
from cifllm.data.readers import records_from_paths
from cifllm.data.registry import DataError, load_registry, resolve_data_dir

REPO = Path(__file__).resolve().parents[1]


def _cif(s: Structure) -> str:
    return str(CifWriter(s))


@pytest.fixture
def toy_source(tmp_path, structures):
    """A registry with one CSV dataset: 12 good CIFs, one duplicate (a supercell), and one bad record per reason."""
    data = tmp_path / "data"
    (data / "toy").mkdir(parents=True)
    good = structures[:12]
    rows = [{"mid": f"t-{i}", "cif": _cif(s), "gap": float(i)} for i, s in enumerate(good)]
    rows.append({"mid": "t-dup", "cif": _cif(good[0] * (1, 1, 2)), "gap": 99.0})
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    partial = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    huge_vol = Structure(Lattice.cubic(40.0), ["Na"], [[0, 0, 0]])
    heavy = Structure(Lattice.cubic(4.0), ["Cf"], [[0, 0, 0]])
    big = Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]]) * (6, 6, 6)
    rows += [
        {"mid": "bad-garbage", "cif": "this is not a CIF", "gap": 0.0},
        {"mid": "bad-empty", "cif": "", "gap": 0.0},
        {"mid": "bad-malformed", "cif": "data_x\n_cell_length_a 4\nloop_\n_atom_site_fract_x\n", "gap": 0.0},
        {"mid": "bad-overlap", "cif": _cif(overlap), "gap": 0.0},
        {"mid": "bad-partial", "cif": _cif(partial), "gap": 0.0},
        {"mid": "bad-volume", "cif": _cif(huge_vol), "gap": 0.0},
        {"mid": "bad-element", "cif": _cif(heavy), "gap": 0.0},
        {"mid": "bad-big", "cif": _cif(big), "gap": 0.0},
    ]
    csv = data / "toy" / "toy.csv.gz"
    pd.DataFrame(rows).to_csv(csv, index=False)
    reg = tmp_path / "registry"
    reg.mkdir()
    entry = {
        "name": "toy",
        "title": "toy set",
        "kind": "structures",
        "format": "csv",
        "licence": "CC0",
        "cif_column": "cif",
        "id_column": "mid",
        "properties": {"band_gap": {"column": "gap", "unit": "eV"}},
        "files": [{"path": "toy/toy.csv.gz", "split": "train", "sha256": content_sha256(csv)}],
    }
    (reg / "toy.yaml").write_text(yaml.safe_dump(entry))
    return data, reg


def test_prepare_counts_every_drop_and_merges_duplicates(toy_source, tmp_path):
    data, reg = toy_source
    cfg = PrepConfig(data_dir=str(data), registry=str(reg), out=str(tmp_path / "corpus"), workers=1, filters=FilterSettings(max_atoms=100), val_fraction=0.2)
    res = prepare_corpus(cfg, progress=False)
    rep = res.report
    assert rep["rows_in"] == 21
    assert rep["drops_by_reason"] == {
        "not_cif": 1,
        "empty": 1,
        "unparsable": 1,
        "min_distance": 1,
        "partial_occupancy": 1,
        "volume_per_atom": 1,
        "unsupported_element": 1,
        "too_many_atoms": 1,
    }
    assert rep["rows_out"] == 12  # 13 good records, the supercell is a duplicate
    assert rep["per_source"]["toy"]["duplicate_within_source"] == 1
    rejects = [json.loads(x) for x in (res.out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 8 and {r["record_id"] for r in rejects} == {f"bad-{k}" for k in ("garbage", "empty", "malformed", "overlap", "partial", "volume", "element", "big")}
    assert all(r["file"] == "toy/toy.csv.gz" and r["reason"] for r in rejects)
    ds = load_corpus(res.out)
    assert len(ds) == 12 and set(ds["split"]) <= {"train", "val"}
    merged = [r for r in ds if len(r["source_ids"]) == 2]
    assert len(merged) == 1 and set(merged[0]["source_ids"]) == {"toy:t-0", "toy:t-dup"}
    assert json.loads(merged[0]["properties"])["band_gap"] == 0.0  # the representative's value first
    prov = json.loads(merged[0]["provenance"])
    assert {p["id"] for p in prov} == {"t-0", "t-dup"} and {p["properties"]["band_gap"] for p in prov} == {0.0, 99.0}
    assert "rows in" in (res.out / "report.md").read_text() and (res.out / "config.yaml").is_file()
    # ids are stable, and a re-run resumes from the canonicalization checkpoint (a line cut by a kill is ignored)
    cache = next((res.out / ".prep_cache").glob("canonical-*.jsonl"))
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])
    res2 = prepare_corpus(cfg, progress=False)
    assert res2.report["timing"]["records_from_checkpoint"] == 21 - 3
    assert load_corpus(res2.out)["id"] == ds["id"] and res2.report["drops_by_reason"] == rep["drops_by_reason"]


def test_parallel_workers_give_the_same_corpus(toy_source, tmp_path):
    data, reg = toy_source
    a = prepare_corpus(PrepConfig(data_dir=str(data), registry=str(reg), out=str(tmp_path / "a"), workers=1), progress=False)
    b = prepare_corpus(PrepConfig(data_dir=str(data), registry=str(reg), out=str(tmp_path / "b"), workers=2), progress=False)
    assert load_corpus(a.out)["text"] == load_corpus(b.out)["text"]


def test_bad_inputs_fail_clearly(toy_source, tmp_path, monkeypatch):
    data, reg = toy_source
    monkeypatch.delenv("CIFLLM_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="CIFLLM_DATA_DIR"):
        resolve_data_dir(None)
    monkeypatch.setenv("CIFLLM_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="CIFLLM_DATA_DIR=.*nope"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="unknown dataset"):
        prepare_corpus(PrepConfig(data_dir=str(data), registry=str(reg), datasets=("mp_99",), out=str(tmp_path / "o")), progress=False)
    (data / "toy" / "toy.csv.gz").rename(data / "toy" / "moved.csv.gz")
    with pytest.raises(DataError, match="toy.csv.gz"):
        prepare_corpus(PrepConfig(data_dir=str(data), registry=str(reg), out=str(tmp_path / "o")), progress=False)
    # a CSV without the CIF column names the file and its columns
    pd.DataFrame({"mid": ["a"], "structure": ["x"]}).to_csv(data / "toy" / "toy.csv.gz", index=False)
    with pytest.raises(DataError, match=r"toy.csv.gz: missing column\(s\) \['cif'"):
        prepare_corpus(PrepConfig(data_dir=str(data), registry=str(reg), out=str(tmp_path / "o")), progress=False)
    # registry entries with unknown keys are rejected
    (reg / "bad.yaml").write_text(yaml.safe_dump({"name": "b", "title": "t", "kind": "structures", "format": "csv", "licence": "x", "files": [{"path": "p"}], "colour": "red"}))
    with pytest.raises(DataError, match="unknown key"):
        load_registry(reg)


def test_loose_files_readers(tmp_path, structures):
    d = tmp_path / "files"
    d.mkdir()
    (d / "good.cif").write_text(_cif(structures[1]))
    (d / "empty.cif").write_text("")
    (d / "binary.cif").write_bytes(b"\x00\x01\x02" * 10)
    structures[2].to(filename=str(d / "POSCAR"), fmt="poscar")
    (d / "s.json").write_text(json.dumps(structures[3].as_dict()))
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    ase_write(str(d / "two.extxyz"), [AseAtomsAdaptor.get_atoms(structures[4]), AseAtomsAdaptor.get_atoms(structures[5])])
    (d / "junk.xyz").write_text("not a structure file\n")
    recs = list(records_from_paths(sorted(d.iterdir()), dataset="files"))
    from cifllm.data.filters import Canonical, FilterSettings, process_record

    out = {r.record_id: process_record(r, FilterSettings()) for r in recs}
    assert isinstance(out["good"], Canonical) and isinstance(out["POSCAR"], Canonical) and isinstance(out["s"], Canonical)
    assert isinstance(out["two#0"], Canonical) and isinstance(out["two#1"], Canonical)
    assert out["empty"].reason == "empty" and out["binary"].reason == "read_error" and out["junk"].reason == "read_error"


def test_download_with_checksum(tmp_path):
    src = tmp_path / "upstream.csv"
    src.write_text("material_id,cif\na,b\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = download_file(src.as_uri(), tmp_path / "data" / "x.csv.gz", sha)
    assert gzip.decompress(dest.read_bytes()) == src.read_bytes() and content_sha256(dest) == sha
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file(src.as_uri(), tmp_path / "data" / "y.csv.gz", "0" * 64)
    assert not (tmp_path / "data" / "y.csv.gz").exists()
    with pytest.raises(DataError, match="download of"):
        download_file((tmp_path / "missing.csv").as_uri(), tmp_path / "z.csv")


def test_shipped_registry_is_valid():
    reg = load_registry()
    assert {"mp_20", "mpts_52", "perov_5", "carbon_24", "aflow_ael_agl", "supercon3d", "3dsc_mp", "jarvis_supercon_3d", "lemat_baselines", "materialmini", "mp_created_at"} <= set(reg)
    for spec in reg.values():
        assert spec.licence and spec.files and all(f.sha256 for f in spec.files)
        if spec.kind == "structures":
            assert spec.cif_column
    assert reg["mpts_52"].year_column == "year" and reg["supercon3d"].properties["tc"]["unit"] == "K"
    cfg = load_config(PrepConfig, REPO / "data_prep" / "pooled.yaml")
    assert cfg.symprec == 0.1


@pytest.mark.data
def test_real_data_small_corpus(data_dir, tmp_path):
    """A few rows of every real source: checksums match, nothing crashes, round trip >= 99.5%, tokens exact."""
    reg = load_registry()
    for name in ("mp_20", "mpts_52", "aflow_ael_agl"):
        assert all(r["status"] == "ok" for r in verify_dataset(reg[name], data_dir))
    cfg = PrepConfig(data_dir=str(data_dir), out=str(tmp_path / "c"), limit_per_file=8, workers=2, filters=FilterSettings(verify_round_trip=True))
    res = prepare_corpus(cfg, progress=False)
    rep = res.report
    assert rep["rows_out"] > 100
    assert rep["round_trip"]["ok_fraction"] >= 0.995
    assert set(rep["per_source"]) >= {"mp_20", "mpts_52", "perov_5", "carbon_24", "aflow_ael_agl", "supercon3d", "3dsc_mp"}
    from cifllm.tokenization import check_round_trip

    ds = load_corpus(res.out)
    assert check_round_trip(ds["text"]).exact_fraction == 1.0
    years = [y for y in ds["year"] if y is not None]
    assert years and min(years) >= 1900
    aflow = [json.loads(p) for p, s in zip(ds["properties"], ds["sources"]) if "aflow_ael_agl" in s]
    assert any({"bulk_modulus", "thermal_conductivity"} <= set(p) for p in aflow)
