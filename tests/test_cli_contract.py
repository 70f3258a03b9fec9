"""The CLI contract on a new user's inputs (issue 31, items 8, 10-14): every bad input file ends with one line naming
the file and the reason and exit code 2 (deeply nested JSON/YAML, a folder for a file, binary content); model names
and packaged files resolve the same way in every stage; novelty takes the user's own structures; a failed stage leaves
earlier outputs untouched; ``--help`` gives every config key its meaning."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from cifllm.cli import STAGES, main, user_error_message
from cifllm.core.config import ConfigError, describe_config, load_config, parse_overrides
from cifllm.core.inputs import MAX_NESTING, InputError, load_json, load_yaml, parse_json, read_text
from cifllm.core.models import DEFAULT_MODEL_DIR
from cifllm.utils import atomic_write_text

DEEP = 1500  # levels: far past MAX_NESTING and past Python's recursion limit (1000) in the parsers


def _one_line_error(capsys, stage: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"cifllm {stage}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def deep(tmp_path) -> dict[str, Path]:
    """Files nested far too deeply: JSON lines, a YAML config, a registry entry, a prompt file."""
    nested = "[" * DEEP + "]" * DEEP
    out = {
        "jsonl": tmp_path / "deep.jsonl",
        "yaml": tmp_path / "deep.yaml",
        "registry": tmp_path / "registry",
        "prompts": tmp_path / "prompts.jsonl",
    }
    out["jsonl"].write_text(nested + "\n")
    out["yaml"].write_text(f"seed: {nested}\n")
    out["registry"].mkdir()
    (out["registry"] / "x.yaml").write_text(f"name: x\nfiles: {nested}\n")
    out["prompts"].write_text('{"composition": ' + nested + "}\n")
    return out


# -- item 8: deeply nested JSON / YAML, folders, binary files --------------------------------------------------------


def test_readers_name_the_file_and_the_reason(tmp_path, deep):
    with pytest.raises(InputError, match=f"deep.yaml: nested more than {MAX_NESTING} levels deep"):
        load_yaml(deep["yaml"])
    with pytest.raises(InputError, match="deep.jsonl: nested more than"):
        load_json(deep["jsonl"])
    with pytest.raises(InputError, match="x:3: nested more than"):
        parse_json('{"a": ' + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "}", "x:3")
    assert parse_json('["[[[[", {"a": "]]"}]', "ok") == ["[[[[", {"a": "]]"}]  # brackets in strings do not count
    with pytest.raises(InputError, match=f"{tmp_path}: is a directory, expected a file"):
        read_text(tmp_path)
    with pytest.raises(InputError, match="missing.json does not exist"):
        load_json(tmp_path / "missing.json")
    (tmp_path / "bin.jsonl").write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="bin.jsonl: binary content"):
        read_text(tmp_path / "bin.jsonl")
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.yaml: not UTF-8 text"):
        load_yaml(tmp_path / "latin1.yaml")
    anchors = tmp_path / "anchors.yaml"  # a YAML alias that contains itself: infinitely deep once loaded
    anchors.write_text("a: &x [*x]\n")
    with pytest.raises(InputError, match="nested more than"):
        load_yaml(anchors)
    with pytest.raises(ConfigError, match="override seed: nested more than"):
        parse_overrides(["seed=" + "[" * DEEP + "]" * DEEP])


@pytest.mark.parametrize(
    "argv, where",
    [
        (lambda d: ["data", "--config", str(d["yaml"])], "deep.yaml"),
        (lambda d: ["evaluate", "--config", str(d["yaml"])], "deep.yaml"),
        (lambda d: ["data", f"registry={d['registry']}", "--list"], "x.yaml"),
        (lambda d: ["sample", "model=default", f"prompt_file={d['prompts']}", f"out={d['yaml'].parent / 'run'}"], "prompts.jsonl:1"),
        (lambda d: ["data", "filters.symprec=" + "[" * DEEP + "]" * DEEP], "override filters.symprec"),
    ],
)
def test_deep_nesting_keeps_the_cli_contract(deep, capsys, argv, where):
    assert main(argv(deep)) == 2
    line = _one_line_error(capsys, argv(deep)[0])
    assert where in line and "nested more than" in line


def test_deep_samples_line_is_a_bad_record_not_a_crash(deep, tmp_path, capsys):
    """A samples.jsonl line nested too deeply is a broken line like any other: a record failing parse, with why."""
    out = tmp_path / "ev"
    assert main(["evaluate", f"samples={deep['jsonl']}", f"out={out}", "workers=0", "report=false", "--no-progress"]) == 0
    rec = json.loads((out / "checks.jsonl").read_text().splitlines()[0])
    assert rec["valid"] is False


def test_a_parser_recursion_anywhere_is_a_user_error(deep):
    """The CLI's net for readers that do not go through cifllm.core.inputs: a RecursionError raised inside the JSON /
    YAML parser is reported with the file being read; any other RecursionError is a bug and keeps its traceback."""

    def unchecked_reader(path: Path) -> object:
        return json.loads(path.read_text())

    with pytest.raises(RecursionError) as info:
        unchecked_reader(deep["jsonl"])
    msg = user_error_message(info.value)
    assert msg is not None and str(deep["jsonl"]) in msg and "nested too deeply" in msg

    def runaway(n: int) -> int:
        return runaway(n + 1)

    with pytest.raises(RecursionError) as info:
        runaway(0)
    assert user_error_message(info.value) is None


def test_folders_and_binary_files_are_named(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["data", "--config", str(folder)]) == 2
    assert f"{folder}: is a directory, expected a file" in _one_line_error(capsys, "data")
    assert main(["sample", "model=default", f"prompt_file={folder}", f"out={tmp_path / 'run'}"]) == 2
    assert f"prompt file {folder}: is a directory" in _one_line_error(capsys, "sample")
    assert not (tmp_path / "run").exists()
    binary = tmp_path / "samples.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["evaluate", f"samples={binary}"]) == 2
    assert f"{binary}: binary content" in _one_line_error(capsys, "evaluate")


def test_atomic_write_to_a_folder_names_the_folder(tmp_path):
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_text(tmp_path, "x")
    assert info.value.filename == str(tmp_path) and ".tmp" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_tokenizer_checks_inputs_before_writing(tmp_path, tiny_corpus, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "--out", str(out), "--corpus", str(tmp_path / "no-corpus")]) == 2
    assert "no-corpus" in _one_line_error(capsys, "tokenizer")
    assert not out.exists()  # issue 31 item 13: nothing written before the corpus was found
    report_dir = tmp_path / "report_dir"
    report_dir.mkdir()
    assert main(["tokenizer", "--out", str(out), "--corpus", str(tiny_corpus), "--report", str(report_dir)]) == 2
    line = _one_line_error(capsys, "tokenizer")
    assert str(report_dir) in line and "is a directory" in line and ".tmp" not in line
    assert not out.exists()
    assert main(["tokenizer", "--out", str(out), "--corpus", str(tiny_corpus), "--report", str(tmp_path / "rt.json")]) == 0
    assert json.loads((tmp_path / "rt.json").read_text())["exact_fraction"] == 1.0


def _assert_fuzz_clean(rep) -> None:
    assert not rep.crashes, rep.crashes[:5]
    assert not rep.hangs, rep.hangs[:5]
    assert not rep.no_reason, rep.no_reason[:5]
    assert set(rep.outcomes) <= {"ok", "user_error"}, rep.outcomes


def test_fuzz_every_reader_on_damaged_files():
    """A seeded sample of (CLI reader, damaged file) pairs: deep JSON/YAML, a folder, binary, non-UTF-8, bad syntax,
    a YAML alias loop, empty. The full grid (72 pairs, ~35 s) is the slow test below."""
    from cifllm import fuzz

    rep = fuzz.fuzz_input_files(10, seed=0)
    _assert_fuzz_clean(rep)
    assert rep.tried == 10 and rep.outcomes["user_error"] >= 5


@pytest.mark.slow
def test_fuzz_every_reader_on_every_damaged_file():
    from cifllm import fuzz

    rep = fuzz.fuzz_input_files()
    _assert_fuzz_clean(rep)
    assert rep.tried == len(fuzz.INPUT_FILE_READERS) * len(fuzz.INPUT_FILE_KINDS)


# -- item 13: a failed stage leaves earlier outputs untouched --------------------------------------------------------


def _samples(tmp_path: Path, structures) -> Path:
    from cifllm.cif import structure_to_text

    run = tmp_path / "samples"
    run.mkdir()
    recs = [{"sample_id": f"s{i}", "cif_text": structure_to_text(s), "prompt_meta": {}} for i, s in enumerate(structures[:2])]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_failed_evaluate_keeps_the_previous_run(tmp_path, structures, capsys):
    run = _samples(tmp_path, structures)
    assert main(["evaluate", f"samples={run}", "workers=0", "report=false", "--no-progress"]) == 0
    ev = run / "eval"
    before = {p.name: p.read_bytes() for p in ev.iterdir() if p.is_file()}
    assert {"config.yaml", "checks.jsonl", "metrics.json"} <= set(before)
    for bad in (f"reference={tmp_path / 'missing'}", f"ground_truth={tmp_path / 'missing'}"):
        assert main(["evaluate", f"samples={run}", "workers=0", "report=false", "max_samples=1", bad, "--no-progress"]) == 2
        _one_line_error(capsys, "evaluate")
        assert {p.name: p.read_bytes() for p in ev.iterdir() if p.is_file()} == before


def test_failed_sample_keeps_the_previous_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("previous run\n")
    assert main(["sample", f"model={tmp_path / 'no-model'}", "composition=NaCl", f"out={out}"]) == 2
    _one_line_error(capsys, "sample")
    assert (out / "config.yaml").read_text() == "previous run\n" and not (out / "prompts.jsonl").exists()


# -- item 10: one model resolver ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter (untrained, rank 2) on the shipped default model, with the record `cifllm finetune` writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cifllm.core.records import ADAPTER_RECORD, model_fingerprint

    d = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL_DIR))
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(d))
    record = {"format": "cifllm-lora-v1", "method": "lora", "task": "own", "base_model": "default", "base_fingerprint": model_fingerprint(DEFAULT_MODEL_DIR), "conditioning": {}}
    (d / ADAPTER_RECORD).write_text(json.dumps(record))
    return d


def test_sample_default_model_with_an_adapter(tmp_path, default_adapter, capsys, monkeypatch):
    """The README's own-data step: `cifllm sample model=default lora=<adapter>` (issue 31 item 10)."""
    monkeypatch.delenv("CIFLLM_MODEL", raising=False)
    out = tmp_path / "s"
    argv = ["sample", "model=default", f"lora={default_adapter}", "composition=NaCl", "num_samples=1", "max_new_tokens=300", f"out={out}", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "cif-v1" not in err and "not a saved model folder" not in err
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1


def test_every_stage_resolves_model_names_the_same_way(monkeypatch):
    from cifllm.bench.runner import BenchConfig, plan_rows
    from cifllm.sampling.generation import load_engine
    from cifllm.training.finetune import resolve_base

    monkeypatch.delenv("CIFLLM_MODEL", raising=False)
    engine, constrained = load_engine("default", "hf", None, log=lambda m: None, device="cpu")
    assert Path(engine.model_dir) == DEFAULT_MODEL_DIR and constrained is True  # the default model writes cif-v2
    rows = plan_rows(BenchConfig(model="default", compare_models={"again": "default"}, template_baseline=False), (), lambda m: None)
    assert [Path(r.model) for r in rows] == [DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR]
    assert resolve_base("default") == DEFAULT_MODEL_DIR


# -- item 11: packaged files from any working folder ------------------------------------------------------------------


def test_packaged_prompt_files_resolve_outside_a_checkout(tmp_path, monkeypatch, capsys):
    from cifllm.sampling.prompts import read_prompt_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIFLLM_MODEL", raising=False)
    assert not Path("eval").exists()
    assert read_prompt_file("builtin:demo_prompts") == read_prompt_file("eval/demo_prompts.txt")
    for value in ("builtin:demo_prompts", "eval/demo_prompts.txt"):
        out = tmp_path / value.replace("/", "_").replace(":", "_")
        assert main(["sample", "model=default", f"prompt_file={value}", "num_samples=1", "max_new_tokens=4", "constrained=false", f"out={out}", "--no-progress"]) == 0
        assert (out / "samples.jsonl").is_file()
    from cifllm.data.prep import PrepConfig

    assert load_config(PrepConfig, "builtin:pooled").out == "data/corpus"  # the pip command of the demo's hint


# -- item 12: novelty against the user's own structures ----------------------------------------------------------------


def test_evaluate_reference_from_structures_texts_and_folders(tmp_path, structures, capsys):
    import cifllm
    from cifllm.cif import structure_to_text
    from cifllm.demo import REFERENCE_HINT

    known, other = structures[0], next(s for s in structures[1:] if s.composition.reduced_formula != structures[0].composition.reduced_formula)
    samples = [structure_to_text(known), structure_to_text(other)]
    m = cifllm.evaluate(samples, reference=[known])
    assert m["rates"]["novel"] == 0.5 and m["reference"]["n"] == 1 and m["reference"]["source"] == "objects"
    m = cifllm.evaluate(samples, reference=[known.to(fmt="cif"), "data_broken\n_cell_length_a x\n"])
    assert m["rates"]["novel"] == 0.5 and m["reference"]["n"] == 1 and sum(m["reference"]["dropped"].values()) == 1
    folder = tmp_path / "my_cifs"
    folder.mkdir()
    known.to(filename=str(folder / "known.cif"))
    assert cifllm.evaluate(samples, reference=folder)["rates"]["novel"] == 0.5
    with pytest.raises(ValueError, match="neither a corpus manifest"):
        cifllm.evaluate(samples, reference=tmp_path)  # a folder with no structures
    # the CLI takes the folder too
    run = _samples(tmp_path, [known, other])
    argv = ["evaluate", "--config", "builtin:eval", f"samples={run}", f"reference={folder}", "workers=0", "report=false", "--no-progress"]
    assert main(argv) == 0  # eval.yaml's reference_split (for a corpus) does not stop a folder of CIFs
    assert "applies to a corpus folder only" in capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["rates"]["novel"] == 0.5 and metrics["reference"]["source"] == "files"
    assert "cifllm data" in REFERENCE_HINT and "reference=" in REFERENCE_HINT


# -- item 14: every config key has its meaning in --help ---------------------------------------------------------------


def _stage_parsers() -> dict[str, tuple[argparse.ArgumentParser, type | None]]:
    out = {}
    for name, (module, _) in STAGES.items():
        mod = importlib.import_module(module)
        p = argparse.ArgumentParser(prog=f"cifllm {name}")
        mod.add_arguments(p)
        out[name] = (p, getattr(mod, "CONFIG", None))
    return out


def test_every_config_key_and_flag_has_help():
    missing = []
    for name, (parser, cls) in _stage_parsers().items():
        if cls is not None:
            keys = describe_config(cls)
            assert keys, name
            missing += [f"{name}: {k.key}" for k in keys if len(k.comment.strip()) < 3]
            epilog = parser.epilog or ""
            for k in keys:
                assert f"  {k.key} = " in epilog and k.comment.split()[0] in epilog, (name, k.key)
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"keys / flags without a meaning in --help: {missing}"


def test_help_lists_the_model_key_with_its_meaning(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "  model = " in out and "'default' (the shipped model" in out
