"""``cifllm rl``: reward fine-tuning of a LoRA adapter with group-relative policy gradients (GRPO / RLOO).

Policy: the base model (default: the shipped default model) plus a LoRA adapter (peft; new, or ``init_adapter`` to
continue a ``cifllm finetune`` adapter). Every step:

1. **Rollouts** through the project's one generation path (:func:`cifllm.sampling.generation.generate`) on the HF
   engine, whose model *is* the policy (the adapter's weights change every step, so a merged copy or a vLLM server
   would be stale), with the constraint engine on: every rollout parses as far as it goes and obeys its prompt.
   ``prompts_per_step`` prompts x ``group_size`` samples; a prompt is de novo (BOS only) or, on a conditioned task with
   the ``target`` term on, with probability ``cond_fraction`` a property line asking for a value drawn uniformly from
   ``[asked_low, asked_high]``.
2. **Rewards**: the weighted terms of ``rewards`` (:mod:`cifllm.training.rewards`: validity, property, target,
   novelty, stability, or your own).
3. **Advantages**, group-relative: ``grpo`` = (r - group mean) / (group std + 1e-6); ``rloo`` = r - mean of the other
   samples of the group. A group whose rewards are all equal teaches nothing (advantage 0).
4. **Update**: one AdamW step on ``mean_seq( mean_tok( -A * log pi(tok) + kl_coef * k3 ) )``, where log pi is the
   policy's log-probability of each generated token (full softmax at the sampling temperature) and
   ``k3 = exp(ref - logp) - (ref - logp) - 1`` the unbiased, non-negative per-token KL estimate to the *base* model
   (the same network with the adapter disabled, peft ``disable_adapter()``). One update per batch of rollouts
   (strictly on-policy), so the PPO ratio is 1 and needs no clipping.

Why not TRL: TRL's ``GRPOTrainer``/``RLOOTrainer`` sample their rollouts themselves (``model.generate`` from a
text-prompt dataset, or their vLLM server / colocated engine), configured by generation keyword arguments; the
constraint engine is a stateful per-row machine (:class:`~cifllm.sampling.hf_constraint.ConstrainedLogitsProcessor`)
that must be built per batch from each row's prompt, which their generation step does not take, so using TRL would
mean overriding that step, i.e. writing the rollout part anyway, plus a heavy dependency for ~100 lines of loss and
bookkeeping. Rollouts through the project's engine are the point of the design (every rollout obeys its prompt, the
same sampler as ``sample``/``bench``). TRL is therefore not a dependency (decided from TRL's documented interface;
TRL was not installed to try it, and newer versions may offer a custom-rollout hook worth revisiting).

Reward hacking guard: on a Case-2 task, every step logs the reward oracle's mean prediction (trained on the training
side only, :class:`~cifllm.bench.oracle.RewardOracle`: extra trees on composition features) and the evaluation
oracle's (the benchmark's :class:`~cifllm.bench.oracle.PropertyOracle`: gradient-boosted trees on composition + cell
features, trained on every labelled row), their gap, the share the evaluation oracle puts above the task's threshold,
unique compositions and element-set diversity among the valid rollouts: a collapse or an oracle exploit is visible.

Resumable: every ``save_steps`` steps ``checkpoint-<step>/`` holds the adapter, the optimizer, the step and the RNG
states (with the integrity marker of :mod:`cifllm.training.checkpoints`); ``--resume`` continues from the newest
finished one, dropping log lines after it. Every step's randomness derives from ``(seed, step)``, so a resumed run
repeats the steps an uninterrupted one would have taken (same device and library versions).

Run folder (``out``, default ``runs/rl-<task>``)::

    config.yaml        resolved RLConfig
    log.jsonl          one record per step (see :func:`step_record`)
    checkpoint-*/      adapter + optimizer.pt + rng.pt + trainer_state.json + cifllm_checkpoint.json
    adapter/           the final peft adapter + tokenizer + cifllm_adapter.json (+ properties.json): serves through
                       every engine like a `cifllm finetune` adapter (vLLM: merged on CPU by the engine)
    merged/            with merge=true: the adapter folded into the base weights
    report.md, plots/  curves of reward by term, KL, validity / diversity and the two oracles; metrics.json
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cifllm.bench.oracle import PropertyOracle, RewardOracle
from cifllm.bench.splits import load_split
from cifllm.bench.tasks import TaskSpec, load_task
from cifllm.conditioning import BUILTIN, format_property_lines, save_properties
from cifllm.core.config import (
    BlockAccess,
    ConfigError,
    config_to_dict,
    flatten,
    load_config,
    merge_for_resume,
    save_config,
)
from cifllm.core.records import ADAPTER_RECORD, MANIFEST_FILE, check_adapter_base, model_fingerprint
from cifllm.evaluation.matching import ReferenceIndex
from cifllm.evaluation.run import evaluate_texts
from cifllm.modeling import SAMPLING_DEFAULTS, sampling_generation_config
from cifllm.sampling.engines import GenerationParams, HFEngine
from cifllm.sampling.generation import generate
from cifllm.sampling.hf_constraint import cif_part
from cifllm.sampling.prompts import Prompt, strip_conditions
from cifllm.tokenization import TOKENIZER_VERSION, tokenizer_fingerprint
from cifllm.training.checkpoints import (
    find_resume_checkpoint,
    list_checkpoints,
    move_incomplete_aside,
    truncate_log,
    write_marker,
)
from cifllm.training.finetune import DEFAULT_TARGETS, build_finetune_texts, resolve_base
from cifllm.training.rewards import RewardContext, RewardModel, Rollout
from cifllm.utils import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["DEFAULT_REWARDS", "RESUME_MUTABLE_KEYS", "RLConfig", "advantages", "load_rl_config", "train_rl"]

#: the default reward: a valid, novel structure the reward oracle places high (stability off: see rewards module)
DEFAULT_REWARDS: dict[str, float] = {"validity": 1.0, "property": 1.0, "novelty": 0.5, "target": 0.0, "stability": 0.0}
#: keys that may change when a run is resumed (``steps``: train longer; the others are bookkeeping)
RESUME_MUTABLE_KEYS = frozenset({"out", "threads", "steps", "save_steps", "keep_checkpoints", "merge"})
_LOG_TARGET = ("tc", "thermal_conductivity")  # properties the oracles fit in log1p space (as the benchmark does)


@dataclass(frozen=True)
class RLConfig(BlockAccess):
    """Reward fine-tuning of a LoRA adapter (see :mod:`cifllm.training.rl`); rates per optimizer step."""

    task: str = ""  #: discovery task (eval/tasks/<task>.yaml); "" = no task: only task-free terms (validity, your own)
    base: str = "default"  #: base model: a save_pretrained folder, "default" (the shipped model) or a Hub id
    init_adapter: str = ""  #: start from this LoRA adapter folder (e.g. a `cifllm finetune` one); "" = a new adapter
    splits: str = "data/tasks"  #: folder of task splits (`cifllm split`)
    out: str = ""  #: run folder; "" = runs/rl-<task>
    #: reward terms, name -> weight (0 = off): validity, property, target, novelty, stability, a name registered with
    #: cifllm.training.rewards.register_reward, or a dotted path "module:function" (fn(rollouts) -> [float | None])
    rewards: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    #: reward oracle (composition features, training side only): extra_trees (bounded by the training range: the
    #: property reward saturates at the threshold) or ridge (extrapolates linearly; easier to exploit)
    reward_oracle: Literal["extra_trees", "ridge"] = "extra_trees"
    steps: int = 100  #: optimizer steps (one batch of rollouts each)
    prompts_per_step: int = 4  #: prompts (groups) per step
    group_size: int = 8  #: samples per prompt; advantages are relative to the group
    advantage: Literal["grpo", "rloo"] = "grpo"  #: grpo = (r - mean) / std in the group; rloo = r - mean of the others
    lr: float = 1e-4  #: AdamW learning rate of the adapter (constant, no weight decay)
    kl_coef: float = 0.05  #: weight of the per-token KL estimate to the base model (adapter disabled)
    max_grad_norm: float = 1.0  #: gradient clipping (L2 norm over the adapter); 0 = off
    train_batch: int = 16  #: sequences per forward/backward pass (gradients accumulate over the step's rollouts)
    temperature: float = SAMPLING_DEFAULTS["temperature"]  #: sampling temperature (log-probabilities use the same)
    top_k: int = SAMPLING_DEFAULTS["top_k"]  #: sampling top-k (0 = off)
    max_new_tokens: int = 1024  #: generated tokens per rollout (a rollout cut here is not finished: invalid)
    sample_batch: int = 32  #: sequences per generate call
    constrained: bool = True  #: sample through the constraint engine (needs a cif-v2 model)
    #: share of a conditioned task's prompts that carry a property line (the task's first conditioning property); only
    #: with the target term on (a property line without it teaches nothing about the asked value)
    cond_fraction: float = 0.5
    asked_low: float | None = None  #: lowest asked value; null = the training side's 5% quantile
    asked_high: float | None = None  #: highest asked value; null = training max + 50% of (max - 5% quantile)
    lora_r: int = 16  #: LoRA rank of a new adapter (as `cifllm finetune`'s)
    lora_alpha: int = 32  #: LoRA scale numerator (scale = alpha / r); no LoRA dropout (sampling and update see one network)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  #: projections that get LoRA weights (all attention + MLP)
    save_steps: int = 10  #: checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  #: newest checkpoints kept
    seed: int = 0  #: every step's randomness derives from (seed, step)
    device: str = "auto"  #: torch device (auto = cuda when visible)
    threads: int = 0  #: torch CPU threads (0 = torch default)
    time_limit_s: float = 10.0  #: per-sample limit of the checks and the novelty match, seconds
    merge: bool = False  #: also write <out>/merged (the adapter folded into the base weights)

    def __post_init__(self) -> None:
        if not isinstance(self.rewards, dict) or not self.rewards:
            raise ValueError("rewards must be a non-empty mapping name -> weight")
        for k, w in self.rewards.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(float(w)):
                raise ValueError(f"rewards.{k}: weight must be a finite number, got {w!r}")
        for key in ("steps", "prompts_per_step", "group_size", "train_batch", "sample_batch", "lora_r", "lora_alpha", "save_steps", "keep_checkpoints", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative to the group), got {self.group_size}")
        if self.lr <= 0 or self.kl_coef < 0 or self.max_grad_norm < 0:
            raise ValueError("lr must be > 0, kl_coef and max_grad_norm >= 0")
        if not 0.0 <= self.cond_fraction <= 1.0:
            raise ValueError(f"cond_fraction must lie in [0, 1], got {self.cond_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (policy gradients need sampling), got {self.temperature}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/rl-{self.task or 'notask'}")


def load_rl_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RLConfig:
    return load_config(RLConfig, path, overrides)


def _say(msg: str) -> None:
    print(f"[cifllm rl] {msg}", file=sys.stderr, flush=True)


# --- the task side -------------------------------------------------------------------------------------------------


@dataclass
class _TaskData:
    spec: TaskSpec | None
    manifest_file: Path | None = None
    train: list[dict[str, Any]] = field(default_factory=list)  # training side: train + val
    eval_oracle: PropertyOracle | None = None
    cond_name: str | None = None  # the property asked for by conditioned prompts
    asked_range: tuple[float, float] | None = None
    oracle_reports: dict[str, Any] = field(default_factory=dict)


def build_context(cfg: RLConfig, log: Callable[[str], None] = _say) -> tuple[RewardContext, _TaskData]:
    """The reward context (reward oracle on the training side, novelty reference, threshold, spread) and the task data
    (evaluation oracle on every labelled row). No task: an empty context (task-free terms only)."""
    if not cfg.task:
        return RewardContext(work_dir=cfg.run_dir, time_limit_s=cfg.time_limit_s), _TaskData(None)
    task = load_task(cfg.task)
    d = Path(cfg.splits) / task.name
    if not (d / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{d}: no split for task {task.name}; build it with `cifllm split --task {task.name}`")
    man = json.loads((d / MANIFEST_FILE).read_text())
    train = load_split(d, "train") + load_split(d, "val")
    if not train:
        raise ValueError(f"{d}: the task's training side (train + val) is empty")
    ref = ReferenceIndex.from_records([r["text"] for r in train], [r["reduced_formula"] for r in train], [str(r.get("id", i)) for i, r in enumerate(train)])
    ctx = RewardContext(task=task, train_ref=ref, work_dir=cfg.run_dir, time_limit_s=cfg.time_limit_s)
    td = _TaskData(task, d / MANIFEST_FILE, train)
    threshold = (man.get("rule") or {}).get("threshold")
    if task.property and threshold is not None:
        log_t = task.property in _LOG_TARGET
        lab = [r for r in train if r.get("value") is not None]
        if len(lab) < 10:
            raise ValueError(f"{d}: only {len(lab)} training rows carry {task.property}; the reward oracle needs >= 10")
        ro = RewardOracle(log_target=log_t, seed=cfg.seed, kind=cfg.reward_oracle)
        td.oracle_reports["reward"] = ro.fit([r["text"] for r in lab], [r["value"] for r in lab], threshold).__dict__
        everything = [r for r in train + load_split(d, "test") if r.get("value") is not None]
        eo = PropertyOracle(log_target=log_t, seed=cfg.seed)  # the benchmark's oracle, as cifllm bench trains it
        td.oracle_reports["evaluation"] = eo.fit([r["text"] for r in everything], [r["value"] for r in everything], threshold).__dict__
        vals = np.asarray([float(r["value"]) for r in lab])
        sv = np.log1p(np.clip(vals, 0, None)) if log_t else vals
        spread = float(np.quantile(sv, 0.95) - np.quantile(sv, 0.05)) or 1.0
        ctx.reward_oracle, ctx.threshold, ctx.spread, ctx.log_target = ro, float(threshold), spread, log_t
        td.eval_oracle = eo
        if task.conditioning and cfg.cond_fraction > 0 and float(cfg.rewards.get("target", 0.0)) != 0.0:
            td.cond_name = task.conditioning[0]
            p05, vmax = float(np.quantile(vals, 0.05)), float(vals.max())
            lo = cfg.asked_low if cfg.asked_low is not None else p05
            hi = cfg.asked_high if cfg.asked_high is not None else vmax + 0.5 * (vmax - p05)
            if not hi > lo:
                raise ConfigError(f"asked range [{lo}, {hi}] is empty: asked_high must exceed asked_low")
            td.asked_range = (lo, hi)
        log(f"oracles: reward MAE {td.oracle_reports['reward']['mae']:.3g} (training side, {len(lab)} rows), evaluation MAE "
            f"{td.oracle_reports['evaluation']['mae']:.3g} ({len(everything)} rows); threshold {threshold:g} {task.unit}")
    return ctx, td


def _prompts(cfg: RLConfig, td: _TaskData, step: int) -> tuple[list[Prompt], list[dict[str, float]]]:
    """The step's prompts and what each asks for; drawn from ``(seed, step)``."""
    rng = np.random.default_rng([cfg.seed, step])
    out, asked = [], []
    for i in range(cfg.prompts_per_step):
        if td.cond_name and td.asked_range and rng.random() < cfg.cond_fraction:
            a = float(rng.uniform(*td.asked_range))
            a = float(BUILTIN.get(td.cond_name).format(a)) if td.cond_name in BUILTIN else a  # the value as written
            text = "".join(ln + "\n" for ln in format_property_lines({td.cond_name: a}))
            out.append(Prompt(text=text, kind="prefix", id=f"{step}:{i}"))
            asked.append({td.cond_name: a})
        else:
            out.append(Prompt(text="", kind="prefix", id=f"{step}:{i}"))
            asked.append({})
    return out, asked


# --- the policy-gradient step ----------------------------------------------------------------------------------------


def advantages(rewards: np.ndarray, groups: np.ndarray, kind: str = "grpo") -> np.ndarray:
    """Group-relative advantages: ``grpo`` (r - mean_g) / (std_g + 1e-6) (std 0 -> 0); ``rloo`` r - mean of the other
    members of the group. ``groups[i]`` is rollout ``i``'s group id."""
    adv = np.zeros_like(rewards, dtype=float)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        r = rewards[idx].astype(float)
        if kind == "grpo":
            sd = r.std()
            adv[idx] = (r - r.mean()) / (sd + 1e-6) if sd > 1e-12 else 0.0
        elif kind == "rloo":
            n = len(r)
            adv[idx] = (r - (r.sum() - r) / (n - 1)) if n > 1 else 0.0
        else:
            raise ValueError(f"unknown advantage {kind!r}")
    return adv


def _token_logprobs(model: Any, seqs: list[list[int]], starts: list[int], temperature: float, pad_id: int, device: str) -> tuple[Any, Any]:
    """Per position log-probability of the next token (``[B, L-1]``, at ``temperature``) and the mask of generated
    positions (token ``t`` of sequence ``b`` counts when ``t >= starts[b]``)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        att[b, : len(s)] = 1
        mask[b, starts[b] - 1 : len(s) - 1] = 1.0
    ids, att, mask = ids.to(device), att.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return lp, mask


@dataclass
class _Update:
    loss: float
    kl: float  # mean per-token k3 estimate over generated tokens
    kl_seq: float  # mean over sequences of sum_t (logp - ref): the sequence-level KL estimate
    grad_norm: float | None
    n_seqs: int


def policy_update(policy: Any, optimizer: Any, seqs: list[list[int]], starts: list[int], adv: np.ndarray, cfg: RLConfig, pad_id: int, device: str) -> _Update:
    """One AdamW step on the rollouts' policy-gradient + KL loss (see the module docstring)."""
    import torch

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    n = len(seqs)
    tot_loss = tot_k3 = tot_tok = tot_kseq = 0.0
    for lo in range(0, n, cfg.train_batch):
        sl = slice(lo, lo + cfg.train_batch)
        s_seqs, s_starts = seqs[sl], starts[sl]
        a = torch.tensor(adv[sl], dtype=torch.float32, device=device)
        with torch.no_grad(), policy.disable_adapter():
            ref, _ = _token_logprobs(policy, s_seqs, s_starts, cfg.temperature, pad_id, device)
        lp, mask = _token_logprobs(policy, s_seqs, s_starts, cfg.temperature, pad_id, device)
        d = ref - lp
        k3 = torch.exp(d) - d - 1.0
        per_tok = -a[:, None] * lp + cfg.kl_coef * k3
        ntok = mask.sum(1).clamp(min=1.0)
        per_seq = (per_tok * mask).sum(1) / ntok
        loss = per_seq.sum() / n
        loss.backward()
        tot_loss += float(loss.detach())
        tot_k3 += float((k3.detach() * mask).sum())
        tot_tok += float(mask.sum())
        tot_kseq += float((-d.detach() * mask).sum())
    gn = None
    if cfg.max_grad_norm > 0:
        gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    optimizer.step()
    return _Update(tot_loss, tot_k3 / max(tot_tok, 1.0), tot_kseq / max(n, 1), gn, n)


# --- diversity and the step record -----------------------------------------------------------------------------------


def _elements(formula: str | None) -> tuple[str, ...]:
    if not formula:
        return ()
    from pymatgen.core import Composition

    try:
        return tuple(sorted(e.symbol for e in Composition(formula).elements))
    except Exception:  # a formula pymatgen cannot read has no element set
        return ()


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def step_record(step: int, rollouts: list[Rollout], total: np.ndarray, values: dict[str, list[float | None]], upd: _Update | None,
                ctx: RewardContext, td: _TaskData, extra: dict[str, Any]) -> dict[str, Any]:
    """The step's log line: reward (mean, std) and per term (mean over measured rollouts, n measured), KL, validity,
    unique compositions and element-set diversity among valid rollouts, both oracles' mean predictions and their gap
    (Case-2 tasks), champion share (evaluation oracle above the threshold). None = not measured."""
    valid = [r for r in rollouts if r.valid]
    nv = len(valid)
    rec: dict[str, Any] = {
        "step": step, "samples": len(rollouts), "reward_mean": float(np.mean(total)), "reward_std": float(np.std(total)),
        "terms": {k: {"mean": _mean([v for v in vs if v is not None]), "n": sum(v is not None for v in vs)} for k, vs in values.items()},
        "kl": upd.kl if upd else None, "kl_seq": upd.kl_seq if upd else None, "loss": upd.loss if upd else None,
        "grad_norm": upd.grad_norm if upd else None,
        "validity": nv / len(rollouts) if rollouts else None,
        "finished": sum(r.finished for r in rollouts) / len(rollouts) if rollouts else None,
        "n_valid": nv,
        "unique_compositions": len({r.reduced_formula for r in valid}) / nv if nv else None,
        "element_set_diversity": len({r.elements for r in valid}) / nv if nv else None,
        "novel": (sum(bool(r.novel) for r in valid if r.novel is not None) / sum(r.novel is not None for r in valid)) if any(r.novel is not None for r in valid) else None,
        "reward_oracle_mean": None, "eval_oracle_mean": None, "oracle_gap": None, "champion_share": None,
    }
    if ctx.reward_oracle is not None and td.eval_oracle is not None and valid:
        texts = [r.text for r in valid]
        rp = ctx.predict(texts)
        ep = td.eval_oracle.predict(texts)
        pairs = [(a, float(b)) for a, b in zip(rp, ep, strict=True) if a is not None and math.isfinite(b)]
        if pairs:
            rec["reward_oracle_mean"] = float(np.mean([a for a, _ in pairs]))
            rec["eval_oracle_mean"] = float(np.mean([b for _, b in pairs]))
            rec["oracle_gap"] = float(np.mean([a - b for a, b in pairs]))
            rec["champion_share"] = sum(b > (ctx.threshold or 0.0) for _, b in pairs) / len(pairs)
    rec.update(extra)
    return rec


# --- checkpoints -----------------------------------------------------------------------------------------------------


def _save_checkpoint(run_dir: Path, step: int, policy: Any, optimizer: Any, keep: int) -> Path:
    import torch

    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(str(tmp))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_json(tmp / "trainer_state.json", {"global_step": step})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_marker(final, step)  # written last: a checkpoint without it is unfinished
    for _s, old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(ckpt: Path, policy: Any, optimizer: Any) -> int:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(policy, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(json.loads((ckpt / "trainer_state.json").read_text())["global_step"])


# --- the run ---------------------------------------------------------------------------------------------------------


def _rollouts(gens: list[Any], prompts: list[Prompt], asked: list[dict[str, float]], verdicts: list[dict[str, Any]]) -> list[Rollout]:
    out = []
    for g, v in zip(gens, verdicts, strict=True):
        text = strip_conditions(cif_part(prompts[g.prompt_index].text) + g.text) if not g.error else ""
        f = v.get("reduced_formula") if v.get("valid") else None
        out.append(Rollout(text=text, asked=asked[g.prompt_index], valid=bool(v.get("valid")), finished=bool(g.finished),
                           reduced_formula=f, elements=_elements(f), novel=v.get("novel"), token_ids=tuple(g.token_ids or ())))
    return out


def train_rl(cfg: RLConfig, resume: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None, log: Callable[[str], None] = _say) -> Path:
    """Run reward fine-tuning (see the module docstring); returns the ``adapter/`` folder. ``on_step(record)`` is
    called after each step's log line is written (a hook for progress displays and tests)."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model

    run_dir = cfg.run_dir
    if resume:
        saved = run_dir / "config.yaml"
        if saved.is_file():
            merge_for_resume(load_rl_config(saved), cfg, flatten(config_to_dict(cfg), RLConfig), RESUME_MUTABLE_KEYS)
    elif (run_dir / "config.yaml").exists() or (run_dir / "adapter").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out=...")
    base = resolve_base(cfg.base)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ctx, td = build_context(cfg, log)
    rewards = RewardModel(cfg.rewards, ctx)  # unknown terms and terms the task cannot feed fail here, before sampling
    engine = HFEngine(base, device=cfg.device, dtype="float32", threads=cfg.threads)
    tok = engine.tokenizer
    if tokenizer_fingerprint(tok.backend_tokenizer) != tokenizer_fingerprint():
        raise ValueError(f"{base}: its tokenizer does not match this cifllm's tokenizer ({TOKENIZER_VERSION})")
    if cfg.init_adapter:
        check_adapter_base(cfg.init_adapter, base)
        policy = PeftModel.from_pretrained(engine.model, cfg.init_adapter, is_trainable=True)
    else:
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
        policy = get_peft_model(engine.model, lcfg)
    policy.eval()  # no dropout anywhere: sampling and the update see the same network
    engine.model = policy  # the engine samples the policy itself (the one generation path; see the module docstring)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    start = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "log.jsonl"
    if resume:
        ckpt, incomplete = find_resume_checkpoint(run_dir)
        move_incomplete_aside(incomplete)
        if ckpt is not None:
            start = _load_checkpoint(ckpt, policy, optimizer)
            truncate_log(log_path, start)
            log(f"resumed from {ckpt} (step {start})")
        else:
            truncate_log(log_path, 0)
            log(f"no finished checkpoint in {run_dir}: starting at step 0")
    save_config(cfg, run_dir / "config.yaml")
    pad_id, eos_id = int(tok.pad_token_id), int(tok.eos_token_id)
    t_run = time.time()
    samples_total = tokens_total = 0
    rec: dict[str, Any] = {}
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.time()
        prompts, asked = _prompts(cfg, td, step)
        params = GenerationParams(
            num_samples=cfg.group_size, temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed * 1_000_003 + step * 1_009, batch_size=cfg.sample_batch,
        )
        gens = sorted(generate(prompts, params, engine=engine, constrained=cfg.constrained, log=log), key=lambda g: (g.prompt_index, g.sample_index))
        t_sample = time.time() - t0
        texts = [strip_conditions(cif_part(prompts[g.prompt_index].text) + g.text) if not g.error else "" for g in gens]
        verdicts = evaluate_texts(texts, workers=0, time_limit_s=cfg.time_limit_s, reference=ctx.train_ref if "novelty" in rewards.terms else None)
        rollouts = _rollouts(gens, prompts, asked, verdicts)
        total, values = rewards(rollouts)
        groups = np.array([g.prompt_index for g in gens])
        adv = advantages(total, groups, cfg.advantage)
        seqs, starts, keep, mismatch = [], [], [], 0
        for i, g in enumerate(gens):
            if g.error:
                continue
            p_ids = tok(prompts[g.prompt_index].text)["input_ids"]
            g_ids = list(g.token_ids) if g.token_ids is not None else tok(g.text, add_special_tokens=False)["input_ids"]
            if len(g_ids) != g.n_tokens:  # the decoded text does not re-encode to the sampled tokens: left out
                mismatch += 1
                continue
            seqs.append(p_ids + g_ids + ([eos_id] if g.finished else []))
            starts.append(len(p_ids))
            keep.append(i)
        upd = policy_update(policy, optimizer, seqs, starts, adv[keep], cfg, pad_id, engine.device) if seqs else None
        samples_total += len(gens)
        tokens_total += sum(g.n_tokens for g in gens)
        rec = step_record(step, rollouts, total, values, upd, ctx, td, {
            "retokenize_mismatch": mismatch, "tokens": sum(g.n_tokens for g in gens), "sample_seconds": round(t_sample, 3),
            "seconds": round(time.time() - t0, 3), "asked": sum(bool(a) for a in asked),
        })
        with log_path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log(f"step {step}/{cfg.steps}: reward {rec['reward_mean']:.3f}, valid {rec['validity']:.2f}, KL {rec['kl'] if rec['kl'] is None else round(rec['kl'], 4)}, {rec['seconds']:.1f} s")
        if step % cfg.save_steps == 0 or step == cfg.steps:
            _save_checkpoint(run_dir, step, policy, optimizer, cfg.keep_checkpoints)
        if on_step is not None:
            on_step(rec)
    adapter = _save_adapter(cfg, run_dir, policy, tok, base, td, {
        "steps": cfg.steps, "rollout_samples_this_session": samples_total, "rollout_tokens_this_session": tokens_total,
        "seconds_this_session": round(time.time() - t_run, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    })
    write_report(run_dir, td)
    return adapter


def _save_adapter(cfg: RLConfig, run_dir: Path, policy: Any, tok: Any, base: Path, td: _TaskData, extra: dict[str, Any]) -> Path:
    """``<out>/adapter`` like `cifllm finetune`'s (peft files + tokenizer + cifllm_adapter.json + properties.json)."""
    tmp, adapter = run_dir / ".adapter.tmp", run_dir / "adapter"
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    names: tuple[str, ...] = (td.cond_name,) if td.cond_name else ()
    stats: dict[str, Any] = {}
    if names and td.spec is not None:
        _, stats = build_finetune_texts(td.train, names, td.spec.property or None, 0.0, cfg.seed)
    pc = policy.peft_config["default"]  # the adapter as trained (init_adapter: its own rank and modules)
    steps_done = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()] if (run_dir / "log.jsonl").is_file() else []
    record = {
        "format": "cifllm-lora-v1", "method": "rl", "task": td.spec.name if td.spec else "",
        "task_manifest_sha256": sha256_file(td.manifest_file) if td.manifest_file else None,
        "base_model": str(base), "base_fingerprint": model_fingerprint(base),
        "tokenizer": {"version": TOKENIZER_VERSION, "fingerprint": tokenizer_fingerprint(tok.backend_tokenizer)},
        "conditioning": stats, "cond_dropout": None,
        "lora": {"r": pc.r, "alpha": pc.lora_alpha, "dropout": 0.0, "target_modules": sorted(pc.target_modules or ()), "init_adapter": cfg.init_adapter or None},
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "global_step": steps_done[-1]["step"] if steps_done else 0,
        # sampling compute of the whole run (all sessions): what a best-of-n row must match
        "rollout_samples": sum(int(r.get("samples") or 0) for r in steps_done),
        "rollout_tokens": sum(int(r.get("tokens") or 0) for r in steps_done),
        "rewards": dict(cfg.rewards), "oracles": td.oracle_reports, **extra, "config": config_to_dict(cfg),
    }
    atomic_write_json(tmp / ADAPTER_RECORD, record)
    save_properties(BUILTIN.subset(names), tmp)
    if adapter.exists():
        shutil.rmtree(adapter)
    os.replace(tmp, adapter)
    if cfg.merge:
        mtmp, merged = run_dir / ".merged.tmp", run_dir / "merged"
        if mtmp.exists():
            shutil.rmtree(mtmp)
        m = policy.merge_and_unload()
        m.config.use_cache = True
        m.generation_config = sampling_generation_config(m.config)
        m.save_pretrained(str(mtmp), safe_serialization=True)
        tok.save_pretrained(str(mtmp))
        for name in ("cifllm_tokenizer.json", "data_manifest.json"):
            if (base / name).is_file():
                (mtmp / name).write_bytes((base / name).read_bytes())
        save_properties(BUILTIN.subset(names), mtmp)
        atomic_write_json(mtmp / "cifllm_merged.json", {**record, "merged": True})
        if merged.exists():
            shutil.rmtree(merged)
        os.replace(mtmp, merged)
    atomic_write_json(run_dir / "metrics.json", {k: v for k, v in record.items() if k not in ("config",)})
    return adapter


# --- report ----------------------------------------------------------------------------------------------------------


def _series(recs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in recs:
        v = get(r)
        if v is not None:
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def write_report(run_dir: str | Path, td: _TaskData | None = None) -> Path:
    """``report.md`` + ``plots/*.png`` from ``log.jsonl``: reward by term, KL, validity / unique compositions /
    element-set diversity, and the reward vs evaluation oracle (Case 2). Returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    plots = run / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figs: list[tuple[str, str]] = []

    def plot(name: str, title: str, lines: list[tuple[str, Callable[[dict[str, Any]], Any]]], ylabel: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for label, get in lines:
            xs, ys = _series(recs, get)
            if xs:
                ax.plot(xs, ys, marker=".", label=label)
                drawn = True
        if not drawn:
            plt.close(fig)
            return
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plots / f"{name}.png", dpi=100)
        plt.close(fig)
        figs.append((title, f"plots/{name}.png"))

    terms = sorted({k for r in recs for k in (r.get("terms") or {})})
    plot("reward", "reward (mean over rollouts) and its terms", [("total", lambda r: r.get("reward_mean"))] + [(t, lambda r, t=t: (r.get("terms") or {}).get(t, {}).get("mean")) for t in terms], "reward / term value")
    plot("kl", "KL to the base model", [("per token (k3)", lambda r: r.get("kl")), ("per sequence (k1)", lambda r: r.get("kl_seq"))], "nats")
    plot("diversity", "validity and diversity", [("validity", lambda r: r.get("validity")), ("unique compositions", lambda r: r.get("unique_compositions")), ("element-set diversity", lambda r: r.get("element_set_diversity")), ("novel", lambda r: r.get("novel"))], "share")
    plot("oracles", "reward vs evaluation oracle (valid rollouts)", [("reward oracle", lambda r: r.get("reward_oracle_mean")), ("evaluation oracle", lambda r: r.get("eval_oracle_mean")), ("gap", lambda r: r.get("oracle_gap"))], "property (task units)")
    lines = [f"# Reward fine-tuning: {run.name}", ""]
    if recs:
        first, last = recs[0], recs[-1]
        k = max(1, min(5, len(recs) // 4 or 1))
        head, tail = recs[:k], recs[-k:]

        def avg(rs: list[dict[str, Any]], key: str) -> str:
            vs = [r[key] for r in rs if r.get(key) is not None]
            return f"{np.mean(vs):.3f}" if vs else "n/a"

        lines += [f"Steps {first['step']}..{last['step']}, {sum(r['samples'] for r in recs)} rollouts. Means over the first and last {k} steps:", "",
                  "| quantity | first | last |", "|---|---|---|"]
        for key in ("reward_mean", "validity", "unique_compositions", "element_set_diversity", "novel", "kl", "reward_oracle_mean", "eval_oracle_mean", "oracle_gap", "champion_share"):
            lines.append(f"| {key} | {avg(head, key)} | {avg(tail, key)} |")
        lines.append("")
    else:
        lines += ["No step logged.", ""]
    if td is not None and td.oracle_reports:
        for name, rep in td.oracle_reports.items():
            lines.append(f"- {name} oracle: {rep.get('model')}; held-out MAE {rep.get('mae'):.3g}, R² {rep.get('r2'):.3f} ({rep.get('n_fit')} fit rows)")
        lines.append("")
    for title, path in figs:
        lines += [f"![{title}]({path})", ""]
    out = run / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
