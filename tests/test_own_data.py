"""Your own data and your own property: the README example end to end on a tiny generated dataset, the property set
that travels with an adapter, and the guards that refuse too little data before training."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from cifllm.conditioning import (
    BUILTIN,
    PROPERTIES_FILE,
    RESERVED_TAGS,
    ConditioningError,
    PropertySet,
    format_property_lines,
    load_properties,
    parse_property_lines,
    save_properties,
    split_conditioning,
    strip_property_lines,
)
from cifllm.sampling.prompts import strip_conditions
from cifllm.tokenization import as_pretrained

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str, lang: str) -> str:
    """The fenced ``lang`` block that follows ``<!-- marker -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README.md has no ```{lang} block after <!-- {marker} -->"
    return m.group(1)

# ------------------------------------------------------------------------------------------ property sets


def test_builtin_property_text_and_token_ids_are_unchanged():
    """Existing adapters keep working: the built-in lines and their token ids are what they always were."""
    lines = format_property_lines({"band_gap": 3.14159, "tc": 92.456, "n_atoms": 8})
    assert lines == ["_property_tc_K 92.5", "_property_band_gap_eV 3.14", "_property_n_atoms 8"]
    tok = as_pretrained()
    assert tok("_property_tc_K", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("_property_tc_K")]
    assert BUILTIN.names[:2] == ("tc", "band_gap") and not any(p.tag.startswith("_property_reserved_") for p in BUILTIN)
    assert load_properties(None) is BUILTIN


def test_user_properties_map_onto_reserved_tags(tmp_path):
    mine = BUILTIN.with_user("hardness", unit="GPa", decimals=1).with_user("toughness", decimals=3)
    assert mine.get("hardness").tag == RESERVED_TAGS[0] == "_property_reserved_0"
    assert mine.get("toughness").tag == "_property_reserved_1" and mine.with_user("tc") is mine  # a built-in stays
    tok = as_pretrained()
    for tag in RESERVED_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = "".join(ln + "\n" for ln in format_property_lines({"toughness": 0.12345, "hardness": 7.25, "tc": 5}, mine)) + "data_X\n"
    assert text == "_property_tc_K 5.0\n_property_reserved_0 7.2\n_property_reserved_1 0.123\ndata_X\n"
    assert parse_property_lines(text, mine) == {"tc": 5.0, "hardness": 7.2, "toughness": 0.123}
    with pytest.raises(ConditioningError, match="malformed property line"):
        parse_property_lines(text)  # the built-in set does not map the reserved tags
    assert split_conditioning(text, mine)[1] == "data_X\n" == strip_property_lines(text)
    # the set travels as a file and comes back equal
    sub = mine.subset(["hardness"])
    save_properties(sub, tmp_path)
    assert load_properties(tmp_path) == sub and json.loads((tmp_path / PROPERTIES_FILE).read_text())["properties"][0]["tag"] == "_property_reserved_0"
    assert load_properties(tmp_path / "old-adapter") is BUILTIN  # no properties.json: built-in properties
    for bad, match in [("Hardness", "lower-case"), ("1x", "lower-case"), ("a b", "lower-case")]:
        with pytest.raises(ConditioningError, match=match):
            BUILTIN.with_user(bad)
    full = BUILTIN
    for k in range(len(RESERVED_TAGS)):
        full = full.with_user(f"p{k}")
    with pytest.raises(ConditioningError, match="no reserved property tag left"):
        full.with_user("one_more")
    with pytest.raises(ConditioningError, match="used twice"):
        PropertySet((*BUILTIN.specs, BUILTIN.specs[0]))
    (tmp_path / PROPERTIES_FILE).write_text("{}")
    with pytest.raises(ConditioningError, match="properties.json"):
        load_properties(tmp_path)


# ------------------------------------------------------------------------------------------ the README example


_FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def rock_salt(a: str, b: str, lat: float):
    """The conventional rock-salt cell (8 sites), built directly (``Structure.from_spacegroup`` takes seconds here)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(lat), [a] * 4 + [b] * 4, _FCC + [[(x + 0.5) % 1, y, z] for x, y, z in _FCC])


def _write_dataset(root: Path) -> tuple[Path, Path]:
    """A folder of CIFs and a CSV (cif, hardness_gpa) made with pymatgen: 14 simple crystals, a made-up property."""
    import pandas as pd
    from pymatgen.io.cif import CifWriter

    rows = []
    for i, (a, b, lat) in enumerate(
        [("Na", "Cl", 5.64), ("Mg", "O", 4.21), ("K", "Br", 6.60), ("Ca", "S", 5.69), ("Li", "F", 4.03), ("Ba", "O", 5.52), ("Sr", "O", 5.16),
         ("K", "Cl", 6.29), ("Na", "F", 4.63), ("Ca", "O", 4.81), ("Li", "Cl", 5.13), ("Rb", "Br", 6.89), ("Ag", "Cl", 5.55), ("Na", "Br", 5.97)]
    ):
        s = rock_salt(a, b, lat)
        rows.append({"cif": str(CifWriter(s)), "hardness_gpa": round(2.0 + 1.5 * i, 2)})
    cifs = root / "my_cifs"
    cifs.mkdir()
    for i, r in enumerate(rows):
        (cifs / f"s{i}.cif").write_text(r["cif"])
    table = root / "my_table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return cifs, table


def test_readme_own_data_example_end_to_end(tmp_path, monkeypatch):
    """The README's commands, run as written in a folder holding my_cifs/ and my_table.csv, with a tiny base model and
    a few steps appended as overrides (key=value given later wins)."""
    from cifllm.cli import main
    from cifllm.sampling.run import read_samples
    from cifllm.sampling.toy import save_random_llama

    _write_dataset(tmp_path)
    base = save_random_llama(tmp_path / "base", shape="test", max_positions=512)
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(ln) for ln in readme_block("own-data-example", "bash").splitlines() if ln.startswith("cifllm ")]
    assert [c[1] for c in commands] == ["finetune", "finetune", "sample"]
    tiny = {
        "finetune": [f"base={base}", "max_steps=3", "batch_size=2", "warmup_steps=1", "eval_steps=0", "save_steps=100", "logging_steps=1",
                     "precision=fp32", "progress=false", "val_fraction=0.3", "lora_r=4", "lora_alpha=8"],
        "sample": [f"model={base}", "max_new_tokens=20", "constrained=false", "threads=1"],
    }
    for c in commands:
        assert main([*c[1:], *tiny[c[1]]]) == 0, c

    plain = tmp_path / "runs" / "ft-mine"
    assert (plain / "adapter" / "adapter_model.safetensors").is_file() and (plain / "own_data" / "corpus" / "manifest.json").is_file()
    assert load_properties(plain / "adapter") == PropertySet(())  # unconditioned: an empty set is recorded
    rec = json.loads((plain / "adapter" / "cifllm_adapter.json").read_text())
    assert rec["task"] == "own:my_cifs" and rec["global_step"] == 3 and rec["train_rows"] >= 8

    run = tmp_path / "runs" / "ft-hardness"
    props = load_properties(run / "adapter")
    assert props.names == ("hardness",) and props.get("hardness").tag == "_property_reserved_0" and props.get("hardness").decimals == 1
    rec = json.loads((run / "adapter" / "cifllm_adapter.json").read_text())
    st = rec["conditioning"]["hardness"]
    assert st["tag"] == "_property_reserved_0" and 2.0 <= st["min"] < st["max"] <= 21.5 and st["n"] == rec["train_rows"]
    report = json.loads((run / "own_data" / "corpus" / "report.json").read_text())
    assert report["rows_in"] == 14
    samples = read_samples(run / "samples")
    assert len(samples) == 3 * 4
    firsts = sorted({s["prompt"].split("\n")[0] for s in samples})
    assert firsts == ["_property_reserved_0 15.0", "_property_reserved_0 25.0", "_property_reserved_0 5.0"]
    assert all(not s["cif_text"].startswith("_property_") for s in samples)
    assert all("above the training maximum" in s["prompt_meta"]["extrapolation"]["hardness"] for s in samples if s["prompt"].startswith("_property_reserved_0 25.0"))

    # the same adapter through the Python API: the name is mapped through adapter/properties.json
    import cifllm

    got = cifllm.generate(n=2, model=base, adapter=run / "adapter", conditions={"hardness": 9.5}, constrained=False, max_new_tokens=10, check=False)
    # (a random model may write property lines of its own after the prompt: cif_text drops every leading one)
    assert all(s.prompt == "_property_reserved_0 9.5\n" and s.text.startswith(s.prompt) and s.cif_text == strip_conditions(s.text) for s in got)
    assert all(not s.cif_text.startswith("_property_") for s in got)
    from cifllm.core.records import AdapterError

    with pytest.raises(AdapterError, match="not trained on"):
        cifllm.generate(n=1, model=base, adapter=run / "adapter", conditions={"band_gap": 1.0}, check=False)


# ------------------------------------------------------------------------------------------ guards


def test_check_enough_data_rules():
    from cifllm.training.guards import NotEnoughDataError, check_enough_data

    check_enough_data("pretrain", "c", 8, 4, 4, world_size=1)
    check_enough_data("pretrain", "c", 8, None, 8)  # no validation set: allowed
    check_enough_data("finetune", "d", 4, 1, 4, drop_last=False)  # one validation CIF is one step without drop_last
    with pytest.raises(NotEnoughDataError, match=r"pretrain: c has 7 training sequences, fewer than one batch \(4 x 2 device\(s\) = 8\)"):
        check_enough_data("pretrain", "c", 7, 8, 4, world_size=2)
    with pytest.raises(NotEnoughDataError, match="3 validation blocks, fewer than one validation batch"):
        check_enough_data("pretrain", "c", 8, 3, 4, unit="blocks")
    with pytest.raises(NotEnoughDataError, match="0 validation"):
        check_enough_data("finetune", "d", 4, 0, 4, drop_last=False)


def test_too_small_corpus_fails_before_training(tiny_corpus, tmp_path):
    """Pretraining on fewer sequences than one batch: one-line error, exit 2, nothing trained or saved."""
    from cifllm.cli import main
    from cifllm.training.config import PretrainConfig, TrainArgs
    from cifllm.training.guards import NotEnoughDataError
    from cifllm.training.pretrain import pretrain

    cfg = PretrainConfig(corpus=str(tiny_corpus), out=str(tmp_path / "p"), preset="tiny", train=TrainArgs(max_steps=5, batch_size=512, warmup_steps=1, progress=False, precision="fp32"))
    with pytest.raises(NotEnoughDataError, match="fewer than one batch"):
        pretrain(cfg)
    assert not (tmp_path / "p" / "model").exists()
    rc = main(["pretrain", f"corpus={tiny_corpus}", f"out={tmp_path / 'q'}", "preset=tiny", "max_steps=5", "batch_size=512", "warmup_steps=1", "progress=false"])
    assert rc == 2 and not (tmp_path / "q" / "model").exists()


def test_too_small_own_data_fails_before_training(tmp_path, capsys):
    from cifllm.cli import main
    from cifllm.sampling.toy import save_random_llama

    cifs, _ = _write_dataset(tmp_path)
    base = save_random_llama(tmp_path / "base", shape="test", max_positions=512)
    rc = main(["finetune", f"data={cifs}", f"base={base}", f"out={tmp_path / 'ft'}", "batch_size=64", "max_steps=3", "warmup_steps=1", "progress=false"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("cifllm finetune: error:")]
    assert rc == 2 and len(lines) == 1 and "training CIFs, fewer than one batch (64 x 1 device(s) = 64)" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "ft" / "adapter").exists()
