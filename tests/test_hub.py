"""Sharing models: export (bf16 safetensors), model cards from run records, push (no network), resolve, generate."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from cifllm.bench.rows import folder_fingerprint
from cifllm.cli import main
from cifllm.core import models as resolve_mod
from cifllm.hub import card as card_mod
from cifllm.hub.card import CardError, choose_license, render_model_card, training_command, write_model_card
from cifllm.hub.export import LOGIT_TOLERANCE, ExportError, export_model
from cifllm.hub.push import PushError, plan_upload, push_to_hub
from cifllm.hub.resolve import DOWNLOAD_PATTERNS, ModelNotFoundError, resolve_model

LICENCES = {
    "mp_20": "CC BY 4.0 (Materials Project data); MIT (CDVAE packaging)",
    "restricted_set": "NO LICENSE upstream; ICSD-derived: research use only, do not redistribute",
}


def _run_record() -> dict:
    from cifllm.config import config_to_dict
    from cifllm.training.config import PretrainConfig, TrainArgs

    cfg = config_to_dict(PretrainConfig(corpus="data/corpus-x", out="runs/x", train=TrainArgs(max_steps=4321, lr=5e-4)))
    return {
        "preset": "tiny",
        "n_parameters": 123456,
        "max_position_embeddings": 256,
        "block_size": 256,
        "data_mode": "grouped",
        "precision": "bf16",
        "world_size": 1,
        "deepspeed": None,
        "global_step": 4321,
        "tokens_seen": 98765432,
        "train_loss": 1.2345,
        "eval_loss": 0.9876,
        "train_seconds_this_session": 3600.0,
        "resumed_from": None,
        "config": cfg,
        "versions": {"torch": "x", "transformers": "y"},
    }


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    """A random tiny Llama folder with fake run records and a pickle that must never be shipped."""
    from cifllm.sampling.toy import save_random_llama

    d = save_random_llama(tmp_path_factory.mktemp("toy") / "model", shape="test", max_positions=256)
    (d / "cifllm_run.json").write_text(json.dumps(_run_record()))
    manifest = {
        "corpus": "data/corpus-x",
        "manifest_sha256": "ab" * 32,
        "manifest": {
            "tokenizer_version": "cif-v1",
            "n_rows": 1100,
            "n_train": 1000,
            "n_val": 100,
            "datasets": list(LICENCES),
            "licences": LICENCES,
            "inputs": [{"dataset": "mp_20", "path": "a"}, {"dataset": "mp_20", "path": "b"}, {"dataset": "restricted_set", "path": "c"}],
        },
        "stats": {"train": {"n_tokens": 555555}, "val": {"n_tokens": 44444}, "longest_cif_tokens": 250},
    }
    (d / "data_manifest.json").write_text(json.dumps(manifest))
    (d / "config.yaml").write_text(yaml.safe_dump(_run_record()["config"]))
    (d / "training_args.bin").write_bytes(pickle.dumps({"secret": 1}))
    return d


@pytest.fixture(scope="module")
def exported(toy_model, tmp_path_factory) -> Path:
    """The toy model exported in bf16 through the CLI."""
    dst = tmp_path_factory.mktemp("export") / "cifllm-toy"
    assert main(["export", str(toy_model), str(dst), "--dtype", "bfloat16"]) == 0
    return dst


# ---------------------------------------------------------------- export


def test_export_bf16_round_trip(toy_model, exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cifllm.utils import sha256_file

    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "cifllm_run.json",
            "cifllm_tokenizer.json", "cifllm_export.json", "config.yaml", "data_manifest.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not [n for n in exported.parent.iterdir() if n.name.startswith(".")]  # no temp folder left behind
    ratio = (exported / "model.safetensors").stat().st_size / (toy_model / "model.safetensors").stat().st_size
    assert 0.4 < ratio < 0.6
    rec = json.loads((exported / "cifllm_export.json").read_text())["export"]
    assert rec["dtype"] == "bfloat16" and rec["source"] == str(toy_model.resolve())
    assert rec["sha256"]["model.safetensors"] == sha256_file(exported / "model.safetensors")
    assert rec["max_abs_logit_diff"] <= rec["tolerance"]
    assert "is_local" not in json.loads((exported / "tokenizer_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(exported), trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(str(exported), trust_remote_code=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok("data_Na4Cl4\n")["input_ids"][0] == tok.bos_token_id


def test_export_float32_overwrite_and_errors(toy_model, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    with pytest.raises(ExportError, match="exists"):
        export_model(toy_model, dst, dtype="float32")
    r = export_model(toy_model, dst, dtype="float32", overwrite=True)
    assert r.max_abs_logit_diff <= LOGIT_TOLERANCE["float32"] and r.top1_agreement == 1.0
    assert abs(r.dst_weights_mb - r.src_weights_mb) < 0.01 * r.src_weights_mb
    assert "training_args.bin" not in r.files
    with pytest.raises(ExportError, match="dtype"):
        export_model(toy_model, tmp_path / "x", dtype="int8")
    with pytest.raises(ExportError, match="config.json"):
        export_model(tmp_path / "nothing", tmp_path / "y")
    with pytest.raises(ExportError, match="inside"):
        export_model(toy_model, toy_model / "sub")


# ---------------------------------------------------------------- card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_card_reads_numbers_from_records(toy_model):
    text = render_model_card(toy_model, repo_id="org/cifllm-toy")
    fm = _front_matter(text)
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "text-generation"
    assert set(card_mod.TAGS) <= set(fm["tags"])
    assert "datasets" not in fm  # Hub dataset ids only; the sources are named in the data table
    assert fm["license"] == "other"  # restricted_set forbids redistribution
    # mp_20 by its public name, source repository and citation (the dataset registry); an unknown name says so
    assert "| MP-20 (CDVAE), partial splits (`mp_20`) | https://github.com/txie-93/cdvae | Xie et al., ICLR 2022" in text
    assert "| `restricted_set` | not recorded | not recorded |" in text
    assert "The cifllm code that trained and samples this model is under the MIT licence" in text
    assert "# cifllm-toy" in text
    for s in ("123,456", "1.2345", "0.9876", "4,321", "98,765,432", "3,600.0 s", "555,555", "cif-v1"):
        assert s in text, s
    assert "max_steps=4321" in text and "lr=0.0005" in text and "corpus=data/corpus-x" in text
    assert "restricted_set" in text and "research use only" in text
    assert 'AutoModelForCausalLM.from_pretrained("org/cifllm-toy"' in text
    assert "cifllm generate --model org/cifllm-toy" in text
    assert "not relaxed with DFT" in text and "hypotheses" in text
    assert "Discovery benchmarks" in text and "not recorded" in text  # no bench dir given


def test_card_with_eval_and_bench(toy_model, tmp_path):
    bench = tmp_path / "results"
    (bench / "task_a").mkdir(parents=True)
    row = {"generator": "base", "csp": {"match@1": 0.25, "match@4": 0.5, "samples_per_prompt": 4},
           "denovo": {"valid": 0.75, "unique": 0.5, "novel": 0.375}, "rediscovery": {"rate": 0.125}}
    row["fingerprint"] = {"model_sha": folder_fingerprint(toy_model)}
    (bench / "task_a" / "metrics.json").write_text(json.dumps({"task": {"name": "task_a", "case": 1}, "rows": [row]}))
    # a task benchmarked with another model: named, not shown
    (bench / "task_b").mkdir()
    stale = {**row, "fingerprint": {"model_sha": "0" * 64}, "denovo": {"valid": 0.99}}
    (bench / "task_b" / "metrics.json").write_text(json.dumps({"task": {"name": "task_b", "case": 1}, "rows": [stale]}))
    (bench / "BENCH.md").write_text("ignored")
    metrics = {"n_samples": 8, "rates": {"parse": 0.875, "valid": 0.625, "unique": 0.5, "novel": 0.25},
               "rates_among_valid": {"unique": 0.8}, "definitions": {"valid": "parse, cell, structural and compositional"}}
    ev = tmp_path / "samples" / "eval"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps(metrics))
    (ev.parent / "summary.json").write_text(json.dumps({"n_prompts": 2, "engine": "hf", "params": {"temperature": 0.7}}))
    text = render_model_card(toy_model, eval_metrics=ev / "metrics.json", bench_dir=bench)
    assert "| task_a | 1 | base | 25.0% | 50.0% (k=4) | 75.0% | 50.0% | 37.5% | 12.5% | n/a |" in text
    assert "| task_b |" not in text and "99.0%" not in text and "for task_b were made with another model" in text
    assert "62.5%" in text and "80.0%" in text and "temperature 0.7" in text
    assert "parse, cell, structural and compositional" in text
    fm = _front_matter(text)
    got = {m["type"]: m["value"] for m in fm["model-index"][0]["results"][0]["metrics"]}
    assert got["valid"] == 0.625 and got["parse"] == 0.875
    # write_model_card: README.md next to the weights, same text; the CLI too
    path = write_model_card(toy_model, eval_metrics=metrics, bench_dir=bench, repo_id="org/x")
    assert path == toy_model / "README.md" and "| task_a |" in path.read_text()
    path.unlink()


def test_card_targets_read_eval_and_bench_records(toy_model, tmp_path):
    """The "Targets" table: Wilson intervals from the evaluation counts, CSP match@20 met only when a model row's
    interval lies wholly above the template's, Spearman judged only on >= 200 samples, speed only from a vLLM run,
    "not measured" for every missing record."""
    fp = {"model_sha": folder_fingerprint(toy_model)}

    def csp(rate, lo, hi, k=20):
        return {"samples_per_prompt": k, f"match@{k}": rate, "rates": {f"match@{k}": {"rate": rate, "ci95": [lo, hi]}}}

    def write(task, rows):
        (tmp_path / "results" / task).mkdir(parents=True)
        (tmp_path / "results" / task / "metrics.json").write_text(json.dumps({"task": {"name": task, "case": 1}, "rows": rows}))

    write("id_random", [{"generator": "base", "fingerprint": fp, "csp": csp(0.40, 0.36, 0.44)},
                        {"generator": "template", "csp": csp(0.30, 0.26, 0.34)}])
    write("time_split", [{"generator": "base", "fingerprint": fp, "csp": csp(0.33, 0.29, 0.37)},
                         {"generator": "old-default", "csp": csp(0.50, 0.45, 0.55)},  # another model: never counts
                         {"generator": "template", "csp": csp(0.30, 0.26, 0.34)}])
    cond = {"generator": "lora+cond", "fingerprint": fp, "property": {"response": {"spearman": {"rho": 0.45, "ci95": [0.33, 0.56], "n": 250}}}}
    write("tc_top", [{"generator": "base", "fingerprint": fp}, cond])
    few = {"generator": "lora+cond", "fingerprint": fp, "property": {"response": {"spearman": {"rho": 0.6, "ci95": [0.1, 0.8], "n": 40}}}}
    write("bandgap_top", [few])  # benchmarked so far only with its adapter: no base row, still this model's
    stale = {"generator": "lora+cond", "fingerprint": {"model_sha": "0" * 64}, "property": {"response": {"spearman": {"rho": 0.9, "ci95": [0.8, 0.95], "n": 500}}}}
    write("kappa_top", [stale])  # another model's adapter row: not this card's
    ev = tmp_path / "samples" / "eval"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps({"n_samples": 1000, "counts": {"valid": 920, "consistent": 500}, "rates": {}}))
    (ev.parent / "summary.json").write_text(json.dumps({"engine": "vllm", "samples_per_s": 20.0}))
    text = render_model_card(toy_model, eval_metrics=ev / "metrics.json", bench_dir=tmp_path / "results")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text[text.index("## Targets"):].splitlines() if line.startswith("| ")}
    assert rows["De novo validity (CDVAE), constrained"].endswith("| 92.0% [90.2, 93.5] of 1,000 | met |")
    assert rows["De novo self-consistency (CrystaLLM), constrained"].endswith("| 50.0% [46.9, 53.1] of 1,000 | missed |")
    assert rows["CSP match@20, `id_random`"].endswith("| base 40.0% [36.0, 44.0]; template 30.0% [26.0, 34.0] | met (base) |")
    assert rows["CSP match@20, `time_split`"].endswith("| missed |")  # above the template, but the intervals overlap
    assert "old-default" not in rows["CSP match@20, `time_split`"]
    assert "0.45 [0.33, 0.56] over 250 valid samples | met |" in rows["Conditioning, `tc_top` (`lora+cond`): Spearman(asked, oracle)"]
    assert rows["Conditioning, `bandgap_top` (`lora+cond`): Spearman(asked, oracle)"].endswith("| not shown (fewer than 200 samples) |")
    assert "for kappa_top were made with another model" in text
    assert "18.40 valid CIFs/s" in rows["Valid CIFs per second (vLLM, de novo evaluation)"]
    assert rows["Valid CIFs per second (vLLM, de novo evaluation)"].endswith("| met |")
    # nothing recorded: every target says so, none is "missed"
    bare = render_model_card(toy_model)
    table = bare[bare.index("## Targets"):bare.index("## How to use")]
    assert table.count("| not measured |") == 7 and "missed" not in table and "| met" not in table


def test_card_missing_records_and_licences(tmp_path, toy_model):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(toy_model / "config.json", bare / "config.json")
    text = render_model_card(bare)
    assert text.count("not recorded") >= 5 and "## Training" in text
    assert _front_matter(text)["license"] == "other"
    with pytest.raises(CardError, match="config.json"):
        render_model_card(tmp_path / "empty")
    assert main(["card", str(tmp_path / "empty")]) == 2
    assert choose_license({"a": "CC BY 4.0", "b": "MIT (x); data CC BY 4.0", "c": "Apache-2.0"}) == ("mit", [])
    assert choose_license({"a": "CC BY 4.0", "b": "CC BY-NC 4.0", "c": "unlimited use"})[1] == ["b", "c"]
    assert training_command({"max_steps": 300, "lr": 2e-3, "out": "runs/a b"}) == "cifllm pretrain lr=0.002 out='runs/a b'"
    # no path of the training machine in a card: relative under the working directory, else the folder name
    assert training_command({"out": "/somewhere/else/runs/mini"}) == "cifllm pretrain out=mini"
    assert training_command({"out": str(Path.cwd() / "runs" / "mini")}) == "cifllm pretrain out=runs/mini"


# ---------------------------------------------------------------- push


def _ready_folder(exported: Path, tmp_path: Path) -> Path:
    d = tmp_path / "ready"
    shutil.copytree(exported, d)
    write_model_card(d, repo_id="org/cifllm-toy")
    (d / "training_args.bin").write_bytes(pickle.dumps({"x": 1}))
    (d / "checkpoint-1").mkdir()
    return d


def test_push_dry_run_lists_files_and_refuses_bad_input(exported, tmp_path, capsys):
    d = _ready_folder(exported, tmp_path)
    r = push_to_hub(d, "org/cifllm-toy", dry_run=True)
    assert r.dry_run and r.commit_url is None
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "cifllm_run.json"} <= set(r.files)
    assert "training_args.bin" in r.skipped and "checkpoint-1/" in r.skipped
    assert not [f for f in r.files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert main(["push", str(d), "--repo", "org/cifllm-toy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "model.safetensors" in out and "skipped: training_args.bin" in out
    for bad in ("not-a-repo", "a/b/c", "org/na me", "../x", ""):
        with pytest.raises(PushError, match="repository id"):
            push_to_hub(d, bad, dry_run=True)
    (d / "weird.json").write_bytes(pickle.dumps([1, 2]))  # a pickle under a name that would be uploaded
    with pytest.raises(PushError, match="pickled"):
        plan_upload(d)
    (d / "weird.json").unlink()
    (d / "README.md").unlink()
    with pytest.raises(PushError, match="README.md"):
        plan_upload(d)
    assert main(["push", str(d), "--repo", "org/cifllm-toy", "--dry-run"]) == 2


def test_push_uploads_only_the_checked_files(exported, tmp_path, monkeypatch):
    import huggingface_hub

    calls: dict = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls["create_repo"] = (repo_id, kw)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            calls["upload_folder"] = kw
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc", commit_message="m", commit_description="", oid="abc"
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    d = _ready_folder(exported, tmp_path)
    r = push_to_hub(d, "org/cifllm-toy", token="hf_x", private=True)
    assert calls["token"] == "hf_x"
    assert calls["create_repo"] == ("org/cifllm-toy", {"private": True, "exist_ok": True, "repo_type": "model"})
    up = calls["upload_folder"]
    assert up["repo_id"] == "org/cifllm-toy" and Path(up["folder_path"]) == d
    assert sorted(up["allow_patterns"]) == sorted(r.files) and "training_args.bin" not in up["allow_patterns"]
    assert "*.bin" in up["ignore_patterns"]
    assert r.commit_url == "https://huggingface.co/org/cifllm-toy/commit/abc"


# ---------------------------------------------------------------- resolve


def test_resolve_model(toy_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIFLLM_MODEL", raising=False)
    assert resolve_model(str(toy_model)) == toy_model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face Hub id"):
        resolve_model("no/such/folder")
    monkeypatch.setattr(resolve_mod, "DEFAULT_MODEL_DIR", tmp_path / "missing-default")
    with pytest.raises(ModelNotFoundError, match="CIFLLM_MODEL"):
        resolve_model(None)
    monkeypatch.setenv("CIFLLM_MODEL", str(toy_model))
    assert resolve_model("default") == toy_model

    import huggingface_hub

    seen: dict = {}

    def fake_snapshot_download(repo_id, **kw):
        seen.update(repo_id=repo_id, **kw)
        return str(toy_model)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("org/cifllm-toy", revision="v1") == toy_model
    assert seen["repo_id"] == "org/cifllm-toy" and seen["revision"] == "v1"
    assert seen["allow_patterns"] == DOWNLOAD_PATTERNS and "*.safetensors" in seen["allow_patterns"]
    assert not [p for p in seen["allow_patterns"] if p.endswith((".bin", ".pt", ".pth", ".pkl", "*"))]


# ---------------------------------------------------------------- generate


def test_generate_cli_errors(capsys, tmp_path):
    assert main(["generate", "--composition", "Xx2", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown element" in err and len(err.strip().splitlines()) == 1
    assert main(["generate", "--de-novo", "--composition", "NaCl", "--model", str(tmp_path)]) == 2
    assert main(["generate", "--composition", "NaCl", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_card_is_a_hub_model_card_and_takes_the_project_licence(toy_model, tmp_path):
    """huggingface_hub reads the card back (licence, model index); with only permissive datasets the weights get the
    project's licence (pyproject.toml), with a restrictive one they stay ``other``."""
    import re

    from huggingface_hub import ModelCard

    d = tmp_path / "permissive"
    shutil.copytree(toy_model, d)
    man = json.loads((d / "data_manifest.json").read_text())
    man["manifest"]["licences"] = {"mp_20": LICENCES["mp_20"]}
    man["manifest"]["datasets"] = ["mp_20"]
    (d / "data_manifest.json").write_text(json.dumps(man))
    metrics = {"n_samples": 10, "rates": {"valid": 0.9, "consistent": 0.7, "consistent_strict": 0.6},
               "consistency_agreement": {"both": 6, "crystallm_only": 1, "strict_only": 0, "neither": 3}}
    card = ModelCard(render_model_card(d, eval_metrics=metrics))
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^license = \{ text = "MIT" \}', pyproject, re.M) and card_mod.CODE_LICENSE == "mit"
    assert card.data.license == "mit" and card.data.license_name is None
    got = {r.metric_type: (r.metric_value, r.metric_name) for r in card.data.eval_results}
    assert got["consistent"] == (0.7, "Self-consistency (CrystaLLM's definition)")
    assert got["consistent_strict"] == (0.6, "Self-consistency, strict rule (cifllm)")
    assert "agree on 9 of 10 samples; 1 pass only CrystaLLM's, 0 only the strict one" in card.text
    assert ModelCard(render_model_card(toy_model)).data.license == "other"


def test_every_registry_dataset_has_a_public_source_for_the_card():
    from cifllm.data.registry import load_registry

    missing = {name: card_mod._public_source(spec) for name, spec in load_registry().items() if not card_mod._public_source(spec).startswith("https://")}
    assert missing == {}
