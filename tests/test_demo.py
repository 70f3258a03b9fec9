"""``cifllm demo``: sample -> evaluate -> report with a given model; novelty note when there is no reference."""

from __future__ import annotations

import json


def test_demo_writes_cifs_metrics_and_report(tmp_path, monkeypatch, tiny_corpus):
    from cifllm.demo import DemoConfig, run_demo
    from cifllm.sampling.toy import save_random_llama

    model = save_random_llama(tmp_path / "model", shape="test", max_positions=256)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("*\nNa4Cl4\n")
    monkeypatch.chdir(tmp_path)  # no data/corpus here
    res = run_demo(DemoConfig(model=str(model), out=str(tmp_path / "demo"), prompt_file=str(prompts), num_samples=2, n_denovo=3, max_new_tokens=24, constrained=False), log=lambda *_: None)
    assert res["n_samples"] == 5 and res["reference"] is None and "novelty not measured" in res["novelty_note"]
    out = tmp_path / "demo"
    for f in ("demo.json", "samples/samples.jsonl", "samples/eval/metrics.json", "samples/eval/report.md"):
        assert (out / f).is_file(), f
    assert json.loads((out / "demo.json").read_text())["prompts"][0]["n"] == 3
    # with a reference corpus, novelty is measured
    res2 = run_demo(DemoConfig(model=str(model), out=str(tmp_path / "demo2"), prompt_file=str(prompts), num_samples=1, n_denovo=1, max_new_tokens=16, reference=str(tiny_corpus), constrained=False), log=lambda *_: None)
    assert res2["reference"] == str(tiny_corpus) and not res2["novelty_note"]


def test_demo_cli_without_default_model(tmp_path, monkeypatch, capsys):
    from cifllm.cli import main

    monkeypatch.setenv("CIFLLM_MODEL", str(tmp_path / "missing"))
    assert main(["demo", f"out={tmp_path / 'd'}"]) == 2
    assert "missing" in capsys.readouterr().err


def test_demo_constrains_a_v2_model_by_default_and_reports_adherence(tmp_path, monkeypatch):
    """A cif-v2 model (random weights: only the engine can keep the composition) gets the constraint engine without
    being asked; the summary line reports it and the prompt adherence (100%)."""
    from cifllm.demo import DemoConfig, run_demo
    from cifllm.sampling.toy import save_random_llama

    model = save_random_llama(tmp_path / "model", shape="test", max_positions=512)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Na4Cl4\n")
    monkeypatch.chdir(tmp_path)
    logs: list[str] = []
    res = run_demo(DemoConfig(model=str(model), out=str(tmp_path / "demo"), prompt_file=str(prompts), num_samples=3, n_denovo=0, max_new_tokens=400), log=logs.append)
    assert res["constrained"] is True and res["rates"]["prompt_adherence"] == 1.0 and res["rates"]["parse"] == 1.0
    done = next(m for m in logs if m.startswith("demo done"))
    assert "constraint engine on" in done and "prompt adherence 100.0%" in done
