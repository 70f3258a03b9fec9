"""Discovery-task splits: rules, exclusion from pretraining, leakage check, manifests, bad task files."""

import json

import pytest

from cifllm.bench.splits import SplitError, build_split, load_split, task_pretrain_corpus
from cifllm.bench.tasks import TaskSpec, list_tasks, load_task
from cifllm.cif import format_formula, structure_to_text
from cifllm.config import ConfigError
from cifllm.data.corpus import CorpusRow, load_corpus, write_corpus


@pytest.fixture(scope="module")
def task_corpus(tmp_path_factory, structures):
    """Prototype crystals with a synthetic property (density), a year and a source each; plus one leak: a structure
    present twice under different ids (a 2x1x1 supercell text, as an imperfect dedup would leave it)."""
    from cifllm.tokenization import build_tokenizer

    tok = build_tokenizer()
    rows = []
    for i, s in enumerate(structures):
        text = structure_to_text(s)
        rows.append(
            CorpusRow(
                text=text,
                reduced_formula=format_formula(s.composition, reduced=True),
                elements=[e.symbol for e in s.composition.elements],
                n_sites=sum(int(ln.split()[2]) for ln in text.split("loop_\n")[1].splitlines()[8:]),
                sg_number=s.get_space_group_info(symprec=0.1)[1],
                n_tokens=len(tok.encode(text, add_special_tokens=False).ids),
                sources=["toy"],
                source_ids=[f"toy:{i}"],
                properties={"density": round(float(s.density), 4)},
                year=1990 + i % 30,
                provenance=[],
            )
        )
    # the leak: same structure as row 0 written in P1 (a different text, so a different id)
    s0 = structures[0]
    t = structure_to_text(s0, mode="p1")
    rows.append(CorpusRow(t, "NaCl", ["Cl", "Na"], 2, 1, 100, ["other"], ["other:0"], {}, None, []))
    return write_corpus(rows, tmp_path_factory.mktemp("taskcorpus"))


def test_shipped_tasks_load():
    names = list_tasks()
    assert {"id_random", "elements_heldout", "prototypes_heldout", "tc_top", "kappa_top", "bandgap_top", "time_split"} <= set(names)
    for n in names:
        t = load_task(n)
        assert t.name == n and t.description


def test_property_top_split_and_leak_removed(task_corpus, tmp_path):
    task = TaskSpec(name="dens", case=2, description="d", rule="property_top", sources=("toy",), property="density", quantile=0.8, val_fraction=0.2)
    man = build_split(task, task_corpus, tmp_path, workers=1)
    test = load_split(tmp_path / "dens", "test")
    train = load_split(tmp_path / "dens", "train") + load_split(tmp_path / "dens", "val")
    thr = man["rule"]["threshold"]
    assert test and train and all(r["value"] > thr for r in test) and all(r["value"] <= thr for r in train)
    assert man["counts"]["test"] == len(test) and set(man["files_sha256"]) >= {"test.jsonl", "train.jsonl"}
    excluded = set((tmp_path / "dens" / "pretrain_exclude.txt").read_text().split())
    assert {r["id"] for r in test} <= excluded
    # the pretraining corpus of the task holds no test structure
    pc = task_pretrain_corpus(task_corpus, tmp_path / "dens", tmp_path / "pc")
    assert not {r["id"] for r in test} & set(load_corpus(pc)["id"])


def test_leak_check_catches_duplicate_across_ids(task_corpus, tmp_path):
    """NaCl is in the corpus twice under different ids (rows 0 and the P1 copy from source "other"). When NaCl falls in
    the test side of a toy-only task, its copy stays in the pretraining corpus: the check must find and remove it."""
    from cifllm.bench.splits import _hash01

    seed = next(s for s in range(100) if _hash01("NaCl", s) < 0.5)
    task = TaskSpec(name="rand", case=0, description="d", rule="random_formula", sources=("toy",), test_fraction=0.5, seed=seed)
    man = build_split(task, task_corpus, tmp_path, workers=1)
    assert man["leak_check"]["leaks_found"] == 1 and len(man["leak_check"]["removed_from_test"]) == 1
    assert "NaCl" not in {r["reduced_formula"] for r in load_split(tmp_path / "rand", "test")}
    # with the element rule, every Na structure (the copy included) leaves pretraining: nothing leaks
    man2 = build_split(TaskSpec(name="na", case=1, description="d", rule="elements", sources=("toy",), elements=("Na",)), task_corpus, tmp_path, workers=1)
    assert man2["leak_check"]["leaks_found"] == 0 and "NaCl" in {r["reduced_formula"] for r in load_split(tmp_path / "na", "test")}


def test_elements_and_time_and_prototypes(task_corpus, tmp_path):
    m = build_split(TaskSpec(name="el", case=1, description="d", rule="elements", sources=("toy",), elements=("O",)), task_corpus, tmp_path, workers=1)
    test = load_split(tmp_path / "el", "test")
    assert test and all("O" in r["elements"] for r in test) and m["counts"]["pretrain_excluded"] >= len(test)
    train = load_split(tmp_path / "el", "train")
    assert all("O" not in r["elements"] for r in train)
    build_split(TaskSpec(name="tm", case=3, description="d", rule="time", sources=("toy",), cutoff_year=2010), task_corpus, tmp_path, workers=1)
    assert all(r["year"] > 2010 for r in load_split(tmp_path / "tm", "test"))
    mp = build_split(TaskSpec(name="pr", case=1, description="d", rule="prototypes", sources=("toy",), test_fraction=0.3, seed=1), task_corpus, tmp_path, workers=1)
    test_keys = {r["prototype"] for r in load_split(tmp_path / "pr", "test")}
    train_keys = {r["prototype"] for r in load_split(tmp_path / "pr", "train") + load_split(tmp_path / "pr", "val")}
    assert test_keys and not test_keys & train_keys and mp["rule"]["prototypes_held_out"] == len(test_keys)


def test_bad_tasks(task_corpus, tmp_path):
    with pytest.raises(SplitError, match="not in the corpus"):
        build_split(TaskSpec(name="x", case=0, description="d", rule="random_formula", sources=("mp_99",)), task_corpus, tmp_path)
    with pytest.raises(SplitError, match="nothing in test"):
        build_split(TaskSpec(name="x", case=1, description="d", rule="elements", sources=("toy",), elements=("Og",)), task_corpus, tmp_path)
    with pytest.raises(SplitError, match="nothing in test"):
        build_split(TaskSpec(name="x", case=3, description="d", rule="time", sources=("toy",), cutoff_year=3000), task_corpus, tmp_path)
    with pytest.raises(ValueError, match="quantile"):
        TaskSpec(name="x", case=2, description="d", rule="property_top", property="density", quantile=1.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ncase: 0\ndescription: d\nrule: random_formula\ndatasets: [mp_20]\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_task(bad)
    # a split edited after the fact is refused
    build_split(TaskSpec(name="ok", case=0, description="d", rule="random_formula", sources=("toy",), test_fraction=0.3), task_corpus, tmp_path, workers=1)
    f = tmp_path / "ok" / "test.jsonl"
    f.write_text(f.read_text() + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(SplitError, match="checksum"):
        load_split(tmp_path / "ok", "test")


def test_bench_runner_end_to_end(task_corpus, tmp_path):
    """A random tiny model and the template baseline through a Case-2 task: metrics.json and BENCH.md are written
    with every metric for both generators."""
    from cifllm.bench.runner import BenchConfig, run_bench
    from cifllm.sampling.toy import save_random_llama

    task = TaskSpec(name="dens", case=2, description="d", rule="property_top", sources=("toy",), property="density", quantile=0.8, val_fraction=0.0, metrics=("csp", "denovo", "rediscovery", "property"))
    tasks_dir = tmp_path / "tasks_yaml"
    tasks_dir.mkdir()
    import yaml

    from cifllm.config import config_to_dict

    (tasks_dir / "dens.yaml").write_text(yaml.safe_dump(config_to_dict(task)))
    build_split(task, task_corpus, tmp_path / "splits", workers=1)
    model = save_random_llama(tmp_path / "model", shape="test", max_positions=512)
    cfg = BenchConfig(task=str(tasks_dir / "dens.yaml"), model=str(model), splits=str(tmp_path / "splits"), corpus=str(task_corpus), out=str(tmp_path / "results"), n_prompts=3, n_samples=2, n_denovo=4, max_new_tokens=64, constrained=False)
    res = run_bench(cfg, log=lambda *_: None)
    names = [r["generator"] for r in res["rows"]]
    assert names == ["base", "template"]
    for r in res["rows"]:
        assert set(r) >= {"csp", "denovo", "rediscovery", "property"} and r["csp"]["n_prompts"] == 3
        assert 0.0 <= r["rediscovery"]["rate"] <= 1.0
    assert res["oracle"]["n_fit"] > 0 and res["rows"][0]["denovo"]["valid"] is not None
    md = (tmp_path / "results" / "BENCH.md").read_text()
    assert "| dens | 2 | base |" in md and "| dens | 2 | template |" in md
    assert (tmp_path / "results" / "dens" / "metrics.json").is_file()


def test_bench_with_adapter_has_lora_and_conditioned_rows(task_corpus, tmp_path):
    """A LoRA adapter (conditioned on density) adds the ``lora`` and ``lora+cond`` rows; the conditioned row reports
    how the oracle-predicted property responds to the asked value."""
    from dataclasses import replace

    import yaml

    from cifllm.bench.runner import BenchConfig, run_bench
    from cifllm.config import config_to_dict
    from cifllm.sampling.toy import save_random_llama
    from cifllm.training.finetune import FINETUNE_TRAIN, FinetuneConfig, finetune

    task = TaskSpec(name="dens", case=2, description="d", rule="property_top", sources=("toy",), property="density", quantile=0.8, val_fraction=0.0, conditioning=("density",), metrics=("csp", "denovo", "rediscovery", "property"))
    (tmp_path / "dens.yaml").write_text(yaml.safe_dump(config_to_dict(task)))
    build_split(task, task_corpus, tmp_path / "splits", workers=1)
    model = save_random_llama(tmp_path / "model", shape="test", max_positions=512)
    adapter = finetune(FinetuneConfig(task=str(tmp_path / "dens.yaml"), base=str(model), splits=str(tmp_path / "splits"), out=str(tmp_path / "ft"), train=replace(FINETUNE_TRAIN, max_steps=3, warmup_steps=1, batch_size=4, eval_steps=0, progress=False)))
    cfg = BenchConfig(task=str(tmp_path / "dens.yaml"), model=str(model), adapter=str(adapter), splits=str(tmp_path / "splits"), corpus=str(task_corpus), out=str(tmp_path / "results"), n_prompts=2, n_samples=2, n_denovo=8, max_new_tokens=48, template_baseline=False, constrained=False)
    res = run_bench(cfg, log=lambda *_: None)
    assert [r["generator"] for r in res["rows"]] == ["base", "lora", "lora+cond"]
    cond = res["rows"][2]
    assert "response" in cond["property"] and cond["csp"]["n_prompts"] == 2
    sp = cond["property"]["response"]["spearman"]
    assert sp["n"] == cond["property"]["response"]["n_scored"] and sp["n_boot"] == 1000
    # only the model row without adapter shares its de novo samples across tasks
    assert res["rows"][0]["sampling"]["denovo"]["file"] and all("file" not in r["sampling"]["denovo"] for r in res["rows"][1:])
    md = (tmp_path / "results" / "BENCH.md").read_text()
    assert "| dens | 2 | lora+cond |" in md and "rho [CI] (n)" in md
    # cond_asked: the conditioned de novo samples ask for the given values instead (in-range asks), a new fingerprint
    logs: list[str] = []
    res2 = run_bench(replace(cfg, cond_asked=[3.0, 1.5], rows=["lora+cond"]), log=logs.append)
    assert any("row lora+cond: saved with other settings (cond_asked null -> [3.0, 1.5])" in x for x in logs)
    rows_dir = tmp_path / "results" / "dens" / "rows"
    dn = [json.loads(x) for x in (rows_dir / "lora+cond.samples.jsonl").read_text().splitlines() if json.loads(x)["kind"] == "denovo"]
    assert sorted(r["asked"] for r in dn) == [1.5] * 4 + [3.0] * 4
    assert [r["generator"] for r in res2["rows"]] == ["base", "lora", "lora+cond"]  # the other rows loaded
