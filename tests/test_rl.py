"""Reward fine-tuning (``cifllm rl``): a synthetic reward moves a tiny random model, terms compose, runs resume, the
shipped config loads, best-of-N screening keeps the top."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cifllm.bench.screening import best_of_n
from cifllm.cli import main as cli_main
from cifllm.core.config import ConfigError, config_help, describe_config, load_config
from cifllm.sampling.engines import GenerationParams, HFEngine
from cifllm.sampling.generation import generate
from cifllm.sampling.prompts import Prompt
from cifllm.sampling.toy import save_random_llama
from cifllm.tokenization import as_pretrained
from cifllm.training.rewards import RewardContext, RewardModel, Rollout, register_reward
from cifllm.training.rl import RLConfig, advantages, load_rl_config, train_rl

REPO = Path(__file__).resolve().parents[1]
TOK = as_pretrained()
OXYGEN = TOK.convert_tokens_to_ids("O")


def oxygen_share(rollouts):
    """Synthetic reward: the share of generated tokens that are the element O."""
    return [sum(i == OXYGEN for i in r.token_ids) / len(r.token_ids) if r.token_ids else 0.0 for r in rollouts]


register_reward("oxygen_share", oxygen_share)

# Unconstrained, 4 tokens per rollout: the random model's next-token distribution is near uniform over 499 tokens
# (share of O ~ 0.002). Its output weights are tiny (init std 0.02), so its logits span ~±0.2 whatever the hidden state:
# only an adapter on lm_head can sharpen the distribution, hence target_modules=[lm_head] here.
FAST = ["constrained=false", "max_new_tokens=4", "temperature=1.0", "top_k=0", "threads=1", "prompts_per_step=2", "group_size=32", "train_batch=64", "sample_batch=64", "kl_coef=0.01", "lr=0.03", "lora_r=4", "lora_alpha=8", "target_modules=[lm_head]"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("toy") / "model", "test", max_positions=64)


def _share(model: Path, adapter: Path | None, n: int = 512) -> float:
    eng = HFEngine(model, threads=1, lora=adapter)
    gens = generate([Prompt("", "prefix", "0")], GenerationParams(num_samples=n, temperature=1.0, top_k=0, max_new_tokens=4, seed=123, batch_size=256), engine=eng, constrained=False)
    toks = [i for g in gens for i in g.token_ids]
    return sum(i == OXYGEN for i in toks) / len(toks)


def test_synthetic_reward_raises_oxygen_share(toy, tmp_path):
    """The share of O tokens rises from its base value (~1/499) after a few RL steps."""
    torch.set_num_threads(1)
    cfg = load_rl_config(None, [*FAST, f"base={toy}", f"out={tmp_path / 'run'}", "steps=15", "save_steps=15", "rewards={oxygen_share: 1.0}"])
    before = _share(toy, None)
    adapter = train_rl(cfg)
    after = _share(toy, adapter)
    assert before < 0.01 and after > 0.1, (before, after)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 16))
    assert np.mean([r["reward_mean"] for r in recs[-3:]]) > np.mean([r["reward_mean"] for r in recs[:3]])
    rec = json.loads((adapter / "cifllm_adapter.json").read_text())
    assert rec["method"] == "rl" and rec["global_step"] == 15 and rec["rollout_samples"] == 15 * 64
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "plots" / "reward.png").is_file()


def test_resume_after_interruption_continues_the_log(toy, tmp_path):
    """Killed after step 3 (checkpoint at 2): the resumed run logs steps 3..4 again, identical to the first try."""
    torch.set_num_threads(1)
    args = [*FAST, "prompts_per_step=1", "group_size=8", f"base={toy}", f"out={tmp_path / 'run'}", "steps=4", "save_steps=2", "rewards={oxygen_share: 1.0}"]
    cfg = load_rl_config(None, args)
    seen = []

    class Stop(Exception):
        pass

    def stop_at_3(rec):
        seen.append(rec)
        if rec["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_rl(cfg, on_step=stop_at_3)
    assert not (tmp_path / "run" / "adapter").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        train_rl(cfg)
    resumed = []
    train_rl(cfg, resume=True, on_step=resumed.append)
    assert [r["step"] for r in resumed] == [3, 4]
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[2]["reward_mean"] == pytest.approx(seen[2]["reward_mean"]) and recs[2]["loss"] == pytest.approx(seen[2]["loss"], rel=1e-4)


def test_reward_terms_compose_with_weights():
    register_reward("one", lambda rs: [1.0] * len(rs))
    register_reward("half_or_none", lambda rs: [0.5 if r.valid else None for r in rs])
    rs = [Rollout(text="a", valid=True), Rollout(text="b", valid=False)]
    total, values = RewardModel({"one": 2.0, "half_or_none": -1.0, "validity": 0.5, "novelty": 0.0}, RewardContext())(rs)
    assert total.tolist() == pytest.approx([2.0 - 0.5 + 0.5, 2.0])  # None adds nothing; novelty (weight 0) not built
    assert values["half_or_none"] == [0.5, None] and values["validity"] == [1.0, 0.0] and "novelty" not in values
    with pytest.raises(ConfigError, match="unknown term"):
        RewardModel({"nope": 1.0}, RewardContext())
    with pytest.raises(ConfigError, match="every weight is 0"):
        RewardModel({"validity": 0.0}, RewardContext())
    with pytest.raises(ConfigError, match="needs a Case-2 task"):
        RewardModel({"property": 1.0}, RewardContext())  # no task: no oracle


def test_dotted_path_reward(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def long_text(rollouts):\n    return [float(len(r.text)) for r in rollouts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    total, values = RewardModel({"my_rewards:long_text": 0.5}, RewardContext())([Rollout(text="abcd")])
    assert total.tolist() == [2.0]
    with pytest.raises(ConfigError, match="cannot import"):
        RewardModel({"my_rewards:missing": 1.0}, RewardContext())


def test_advantages_group_relative():
    r = np.array([1.0, 0.0, 1.0, 1.0, 5.0, 5.0])
    g = np.array([0, 0, 1, 1, 2, 2])
    a = advantages(r, g, "grpo")
    assert a[:2] == pytest.approx([1.0, -1.0], abs=1e-4) and a[2:].tolist() == [0.0] * 4  # equal rewards teach nothing
    b = advantages(np.array([3.0, 0.0, 0.0]), np.zeros(3, dtype=int), "rloo")
    assert b.tolist() == pytest.approx([3.0, -1.5, -1.5])


def test_shipped_rl_yaml_loads_and_help_lists_every_key():
    cfg = load_config(RLConfig, REPO / "train" / "configs" / "rl.yaml")
    assert isinstance(cfg, RLConfig) and cfg.rewards["property"] > 0 and cfg.rewards["stability"] == 0
    text = config_help(RLConfig)
    assert all(f"  {k.key} = " in text for k in describe_config(RLConfig))
    with pytest.raises(ConfigError):
        load_config(RLConfig, None, ["group_size=1"])
    with pytest.raises(ConfigError):
        load_config(RLConfig, None, ["rewards={validity: high}"])


def test_cli_rl_runs_and_refuses_bad_input(toy, tmp_path, monkeypatch, capsys):
    (tmp_path / "cli_rewards.py").write_text("def o(rollouts):\n    return [float('O' in r.text) for r in rollouts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = ["rl", f"--out={out}", *FAST, "prompts_per_step=1", "group_size=4", f"base={toy}", "steps=1", "rewards={cli_rewards:o: 1.0}"]
    assert cli_main(args) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert cli_main(["rl", f"--out={tmp_path / 'bad'}", f"base={toy}", "rewards={nope: 1}"]) == 2
    assert "unknown term" in capsys.readouterr().err
    assert cli_main(["rl", "--task", "no_such_task", f"--out={tmp_path / 'bad2'}"]) == 2


def test_best_of_n_keeps_the_top_by_score():
    keep = best_of_n([0.1, float("nan"), 0.9, 0.5, None], 2)
    assert keep == [2, 3]
    assert best_of_n([1.0, 1.0, 0.0], 5) == [0, 1, 2]


@pytest.fixture(scope="module")
def dens_task(tmp_path_factory, structures):
    """A Case-2 task over the prototype crystals: density above its 80% quantile is the tail; conditioned on density."""
    import yaml

    from cifllm.bench.splits import build_split
    from cifllm.bench.tasks import TaskSpec
    from cifllm.cif import format_formula, structure_to_text
    from cifllm.core.config import config_to_dict
    from cifllm.data.corpus import CorpusRow, write_corpus

    root = tmp_path_factory.mktemp("dens")
    rows = [
        CorpusRow(text=(t := structure_to_text(s)), reduced_formula=format_formula(s.composition, reduced=True), elements=[e.symbol for e in s.composition.elements],
                  n_sites=len(s), sg_number=s.get_space_group_info(symprec=0.1)[1], n_tokens=len(TOK(t)["input_ids"]), sources=["toy"], source_ids=[f"toy:{i}"],
                  properties={"density": round(float(s.density), 4)}, year=None, provenance=[])
        for i, s in enumerate(structures)
    ]
    corpus = write_corpus(rows, root / "corpus")
    task = TaskSpec(name="dens", case=2, description="d", rule="property_top", sources=("toy",), property="density", quantile=0.8, val_fraction=0.0, conditioning=("density",), metrics=("csp", "denovo", "rediscovery", "property"))
    (root / "dens.yaml").write_text(yaml.safe_dump(config_to_dict(task)))
    build_split(task, corpus, root / "splits", workers=1)
    return root


def test_task_terms_oracles_and_conditioned_rollouts(dens_task, toy, tmp_path):
    """On a Case-2 task: the reward oracle sees the training side only and differs from the evaluation oracle; the
    property / target / novelty terms follow their formulas; a conditioned run asks for values in its range and saves
    an adapter whose record carries the conditioning statistics."""
    from cifllm.bench.oracle import PropertyOracle, RewardOracle
    from cifllm.bench.splits import load_split
    from cifllm.evaluation.run import evaluate_texts
    from cifllm.training.rl import build_context

    args = [*FAST, "prompts_per_step=2", "group_size=2", f"base={toy}", f"task={dens_task / 'dens.yaml'}", f"splits={dens_task / 'splits'}", f"out={tmp_path / 'run'}",
            "rewards={validity: 1.0, property: 1.0, target: 1.0, novelty: 1.0}", "cond_fraction=1.0", "steps=2"]
    cfg = load_rl_config(None, args)
    ctx, td = build_context(cfg, log=lambda m: None)
    train = load_split(dens_task / "splits" / "dens", "train")
    test = load_split(dens_task / "splits" / "dens", "test")
    assert type(ctx.reward_oracle) is RewardOracle and type(td.eval_oracle) is PropertyOracle
    assert td.oracle_reports["reward"]["n_fit"] + td.oracle_reports["reward"]["n_holdout"] == len(train)  # training side only
    assert td.oracle_reports["evaluation"]["n_fit"] + td.oracle_reports["evaluation"]["n_holdout"] == len(train) + len(test)
    lo, hi = td.asked_range
    vals = [r["value"] for r in train]
    assert lo < max(vals) < hi and ctx.threshold == pytest.approx(max(vals), rel=0.2)

    texts = [train[0]["text"], test[0]["text"]]
    verd = evaluate_texts(texts, workers=0, time_limit_s=30, reference=ctx.train_ref)
    assert [v["novel"] for v in verd] == [False, True]
    rs = [Rollout(text=t, valid=True, novel=v["novel"], asked={"density": 5.0}) for t, v in zip(texts, verd)] + [Rollout(text="garbage", valid=False)]
    model = RewardModel({"property": 1.0, "target": 1.0, "novelty": 1.0}, ctx)
    total, values = model(rs)
    pred = ctx.reward_oracle.predict(texts)
    assert values["property"][:2] == pytest.approx([(p - ctx.threshold) / ctx.spread for p in pred]) and values["property"][2] is None
    assert values["target"][:2] == pytest.approx([-abs(p - 5.0) / ctx.spread for p in pred])
    assert values["novelty"] == [0.0, 1.0, None] and total[2] == 0.0

    adapter = train_rl(cfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["asked"] for r in recs] == [2, 2] and set(recs[0]["terms"]) == {"validity", "property", "target", "novelty"}
    rec = json.loads((adapter / "cifllm_adapter.json").read_text())
    assert rec["task"] == "dens" and set(rec["conditioning"]) == {"density"} and rec["oracles"]["reward"]["model"] != rec["oracles"]["evaluation"]["model"]
    assert json.loads((adapter / "properties.json").read_text())


def test_bench_rl_and_best_of_n_rows(dens_task, toy, tmp_path):
    """`cifllm bench` with an rl adapter and best_of_n=-1: an ``rl`` row, a ``best-of-n`` row whose pool is the rl
    run's rollouts + n_denovo (equal sampling compute), both with a champion rate, and the champions table."""
    from cifllm.bench.runner import BenchConfig, run_bench

    rl_cfg = load_rl_config(None, [*FAST, "prompts_per_step=1", "group_size=3", f"base={toy}", f"task={dens_task / 'dens.yaml'}", f"splits={dens_task / 'splits'}",
                                   f"out={tmp_path / 'rl'}", "rewards={validity: 1.0, property: 1.0}", "steps=2"])
    adapter = train_rl(rl_cfg)
    cfg = BenchConfig(task=str(dens_task / "dens.yaml"), model=str(toy), splits=str(dens_task / "splits"), corpus=str(dens_task / "corpus"), out=str(tmp_path / "results"),
                      n_prompts=1, n_samples=1, n_denovo=2, max_new_tokens=8, constrained=False, template_baseline=False, workers=0, time_limit_s=10.0,
                      rl_adapter=str(adapter), best_of_n=-1)
    res = run_bench(cfg, log=lambda *_: None)
    rows = {r["generator"]: r for r in res["rows"]}
    assert list(rows) == ["base", "rl", "best-of-n"]
    assert rows["rl"]["spec"]["adapter"] == str(adapter) and "csp" in rows["rl"]
    scr = rows["best-of-n"]["screening"]
    assert scr["n_pool"] == 2 * 3 + 2 and scr["n_kept"] == 2 and rows["best-of-n"]["denovo"]["n"] == 2 and "csp" not in rows["best-of-n"]
    for r in rows.values():
        assert "champion_rate" in r["property"] and r["property"]["rates"]["champion_rate"]["n"] == r["property"]["champions"]["n_valid_novel_denovo"]
    md = (tmp_path / "results" / "BENCH.md").read_text()
    assert "| dens | best-of-n | 0 |" in md and "| dens | rl |" in md
    again = run_bench(cfg, log=lambda *_: None)  # resumable: the saved rows are loaded as they are
    assert [r["generator"] for r in again["rows"]] == ["base", "rl", "best-of-n"] and again["rows"][2]["screening"] == scr


def test_best_of_n_screen_keeps_the_reward_oracle_top(dens_task):
    """The screening step keeps the n_denovo pool samples the reward oracle ranks highest (unparsable ones last)."""
    from cifllm.bench.oracle import RewardOracle
    from cifllm.bench.runner import RowSpec, _screen
    from cifllm.bench.splits import load_split

    train = load_split(dens_task / "splits" / "dens", "train")
    ro = RewardOracle(seed=0)
    ro.fit([r["text"] for r in train], [r["value"] for r in train])
    pool = [{"kind": "denovo", "prompt_index": None, "sample_index": k, "text": t} for k, t in enumerate(["not a cif", *[r["text"] for r in train[:6]]])]

    class _Sc:
        reward_oracle = ro

    class _Td:
        n_denovo = 3

    out, info = _screen(RowSpec("best-of-n", "model", "m", screen_n=7), _Td(), pool, _Sc())
    preds = ro.predict([r["text"] for r in train[:6]])
    want = {int(i) + 1 for i in np.argsort(-preds)[:3]}
    assert {r["sample_index"] for r in out if r["kind"] == "denovo"} == want
    assert info == {"n_pool": 7, "n_kept": 3, "n_reward_scored": 6, "reward_oracle": ro.description}
    assert out[0]["reward_pred"] is None and out[0]["kind"] == "pool"


def test_stability_term_uses_the_hull_interface():
    """The stability term reads any EnergyAboveHull callable (re-pointed by set_hull_factory): -E_hull clipped to
    [0, 1] eV/atom, None where the potential gives nothing or the sample is invalid."""
    from cifllm.training import rewards as R

    seen = []

    def fake_hull(texts):
        seen.extend(texts)
        return [{"a": 0.05, "b": -0.2, "c": 3.0}.get(t) for t in texts]

    old = R._HULL_FACTORY[0]
    R.set_hull_factory(lambda ctx: fake_hull)
    try:
        rs = [Rollout(text=t, valid=True) for t in ("a", "b", "c", "d")] + [Rollout(text="e", valid=False)]
        _, values = RewardModel({"stability": 1.0}, RewardContext())(rs)
    finally:
        R.set_hull_factory(old)
    assert values["stability"] == pytest.approx([-0.05, 0.0, -1.0, None, None]) and seen == ["a", "b", "c", "d"]


def test_default_stability_term_is_chgnet_on_the_dft_hull():
    """The default stability term: CHGNet single point on the shipped DFT hull, no task needed; rock salt NaCl at its
    DFT lattice constant is near the hull (reward ~0), a badly stretched copy far above it, garbage gives None."""
    pytest.importorskip("chgnet")
    from pymatgen.core import Lattice, Structure

    from cifllm.cif import structure_to_text

    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]

    def rock_salt(a):
        return structure_to_text(Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, fcc + [[(x + 0.5) % 1, y, z] for x, y, z in fcc]))

    rs = [Rollout(text=rock_salt(5.69), valid=True), Rollout(text=rock_salt(8.5), valid=True), Rollout(text="data_x\n", valid=True)]
    _, values = RewardModel({"stability": 1.0}, RewardContext())(rs)
    good, bad, garbage = values["stability"]
    assert good > -0.1 and bad < good - 0.3 and garbage is None


def test_init_adapter_continues_an_existing_adapter(toy, tmp_path):
    """init_adapter: the run starts from that adapter's weights (step-0 policy = it, not the base) and records its rank."""
    torch.set_num_threads(1)
    base_args = [*FAST, "prompts_per_step=1", "group_size=8", f"base={toy}", "rewards={oxygen_share: 1.0}"]
    register_reward("mean_token_id", lambda rs: [float(np.mean(r.token_ids)) / len(TOK) if r.token_ids else 0.0 for r in rs])  # dense: every group varies
    first = train_rl(load_rl_config(None, [*base_args, f"out={tmp_path / 'a'}", "steps=2", "lora_r=2", "lora_alpha=4", "rewards={mean_token_id: 1.0}"]))
    second = train_rl(load_rl_config(None, [*base_args, f"out={tmp_path / 'b'}", "steps=1", f"init_adapter={first}"]))
    rec = json.loads((second / "cifllm_adapter.json").read_text())
    assert rec["lora"]["r"] == 2 and rec["lora"]["init_adapter"] == str(first)
    log_b = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0])
    assert log_b["kl"] > 0  # the first step's policy already differs from the base


def test_reward_oracle_kinds(dens_task):
    """extra_trees never predicts beyond the training range (its reward saturates at the threshold); ridge fits on the
    same features and may; an unknown kind is refused; the rl config refuses an unknown kind too."""
    from cifllm.bench.oracle import RewardOracle
    from cifllm.bench.splits import load_split

    train = load_split(dens_task / "splits" / "dens", "train")
    tail = [r["text"] for r in load_split(dens_task / "splits" / "dens", "test")]
    y = [r["value"] for r in train]
    trees = RewardOracle(kind="extra_trees")
    trees.fit([r["text"] for r in train], y)
    assert np.nanmax(trees.predict(tail)) <= max(y) + 1e-9
    ridge = RewardOracle(kind="ridge")
    rep = ridge.fit([r["text"] for r in train], y)
    assert np.isfinite(ridge.predict(tail)).all() and "Ridge" in rep.model
    with pytest.raises(ValueError, match="reward oracle kind"):
        RewardOracle(kind="gp")
    with pytest.raises(ConfigError):
        load_rl_config(None, ["reward_oracle=gp"])
