"""Pretraining in-process on the tiny corpus: data packing, the run folder, the saved model, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifllm.config import ConfigError
from cifllm.training.checkpoints import MARKER, CheckpointError
from cifllm.training.config import PretrainConfig, load_pretrain_config
from cifllm.training.data import (
    IGNORE_INDEX,
    GroupedSampler,
    PackedBlocks,
    PadCollator,
    pack_documents,
    tokenize_texts,
)
from cifllm.training.deepspeed_config import DeepSpeedConfigError
from cifllm.training.pretrain import prepare, pretrain

REPO = Path(__file__).resolve().parents[1]
FAST = dict(batch_size=4, warmup_steps=2, logging_steps=2, progress=False, precision="fp32")


def make_cfg(corpus: Path, out: Path, **kw) -> PretrainConfig:
    values = {"corpus": str(corpus), "out": str(out), **FAST, **kw}
    return load_pretrain_config(None, values)


@pytest.fixture(scope="module")
def tok():
    from cifllm.tokenization import as_pretrained

    return as_pretrained()


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory) -> Path:
    """8 steps of the tiny preset (fp32, packed blocks), eval + checkpoint every 4 steps."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = make_cfg(tiny_corpus, out, max_steps=8, eval_steps=4, save_steps=4, data_mode="packed")
    model_dir = pretrain(cfg)
    assert model_dir == out / "model"
    return out


# -- data -----------------------------------------------------------------------------------------------------------


def test_tokenize_adds_bos_eos_and_checks_lengths(tok):
    docs = tokenize_texts(["data_NaCl\n", "data_MgO\n"], tok)
    assert len(docs) == 2
    d0 = docs.doc(0)
    assert d0[0] == tok.bos_token_id and d0[-1] == tok.eos_token_id
    assert tok.decode(d0[1:-1].tolist()) == "data_NaCl\n"
    with pytest.raises(ValueError, match="another tokenizer"):
        tokenize_texts(["data_NaCl\n"], tok, expected_lengths=[3])


def test_pack_documents_keeps_every_document_whole():
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 200, size=300)
    lengths[7] = 300  # longer than a block
    blocks, dropped = pack_documents(lengths, 256, seed=3)
    assert dropped.tolist() == [7]
    seen = np.concatenate(blocks)
    assert sorted(seen.tolist()) == [i for i in range(300) if i != 7]  # each document exactly once
    assert all(lengths[b].sum() <= 256 for b in blocks)
    fill = lengths[seen].sum() / (len(blocks) * 256)
    assert fill > 0.9  # best-fit packing wastes little
    again, _ = pack_documents(lengths, 256, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again, strict=True))


def test_packed_block_positions_labels_and_document_masking(tok):
    import torch

    from cifllm.modeling import build_model, make_config

    docs = tokenize_texts(["data_NaCl\nloop_\n", "data_MgO\n_cell_length_a 4.21\n"], tok)
    ds = PackedBlocks(docs, [np.array([0, 1])], block_size=64, pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    row = ds[0]
    n0, n1 = len(docs.doc(0)), len(docs.doc(1))
    assert row["position_ids"][:n0].tolist() == list(range(n0))
    assert row["position_ids"][n0 : n0 + n1].tolist() == list(range(n1))  # restart per CIF
    assert row["labels"][0] == IGNORE_INDEX and row["labels"][n0] == IGNORE_INDEX  # BOS is never a target
    assert (row["labels"][n0 + n1 :] == IGNORE_INDEX).all() and (row["input_ids"][n0 + n1 :] == tok.pad_token_id).all()
    assert ds.stats()["padding_fraction"] == pytest.approx(1 - (n0 + n1) / 64, abs=1e-4)

    # the second CIF inside the block gives the same logits as the same CIF alone: attention stays within a CIF
    cfg = make_config("tiny", vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        # no KV cache, as in training (the Trainer sets use_cache=False): transformers then reads the packing from
        # the restarting position_ids and builds a block-diagonal causal mask
        packed = model(input_ids=row["input_ids"][None], position_ids=row["position_ids"][None], use_cache=False).logits[0]
        alone = model(input_ids=torch.from_numpy(docs.doc(1).astype(np.int64))[None]).logits[0]
        causal = model(input_ids=row["input_ids"][None], use_cache=False).logits[0]  # no restart: sees CIF 1
    torch.testing.assert_close(packed[n0 : n0 + n1], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(causal[n0 : n0 + n1], alone, atol=1e-2)


def test_grouped_sampler_is_reproducible_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(10, 1000, size=500)
    s = GroupedSampler(lengths, batch_size=4, seed=7, mega_factor=10)
    s.set_epoch(1)
    order = list(s)
    s2 = GroupedSampler(lengths, batch_size=4, seed=7, mega_factor=10)
    s2.set_epoch(1)
    assert order == list(s2) and sorted(order) == list(range(500))
    s2.set_epoch(2)
    assert list(s2) != order
    assert lengths[order[0]] == lengths.max()  # longest mega-batch first
    batches = np.array(order[:480]).reshape(-1, 4)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)  # rows of a batch have similar lengths


def test_pad_collator(tok):
    import torch

    coll = PadCollator(tok.pad_token_id, tok.bos_token_id, multiple=8)
    out = coll([{"input_ids": torch.tensor([1, 5, 6, 2])}, {"input_ids": torch.tensor([1, 7, 2])}])
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum().item() == 7
    assert out["labels"][1].tolist() == [IGNORE_INDEX, 7, 2] + [IGNORE_INDEX] * 5


# -- a real run ----------------------------------------------------------------------------------------------------


def test_run_folder_log_and_schedule(trained_run):
    for name in ("config.yaml", "data_manifest.json", "log.jsonl", "checkpoint-4", "checkpoint-8", "model"):
        assert (trained_run / name).exists(), name
    assert (trained_run / "checkpoint-8" / MARKER).is_file()
    recs = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6, 8]
    assert all(r["tokens_per_s"] > 0 and r["tokens_seen"] > 0 for r in train)
    # the logged rate is the one used for that step: linear warm-up over 2 steps, then cosine from 1e-3 to 1e-4
    def expected(step: int, peak: float = 1e-3, floor: float = 1e-4, warmup: int = 2, total: int = 8) -> float:
        t = step - 1
        if t < warmup:
            return peak * t / warmup
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    for r in train:
        assert r["learning_rate"] == pytest.approx(expected(r["step"]), rel=1e-6, abs=1e-12), r["step"]
    evals = [r for r in recs if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.3  # validation loss falls
    data = json.loads((trained_run / "data_manifest.json").read_text())
    assert data["stats"]["train"]["n_cifs"] == data["manifest"]["n_train"]
    assert data["stats"]["max_position_embeddings"] >= data["manifest"]["max_tokens"] + 2


def test_saved_model_loads_and_matches_eval_loss(trained_run, tiny_corpus):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = trained_run / "model"
    for name in ("cifllm_run.json", "config.yaml", "data_manifest.json", "tokenizer.json", "generation_config.json"):
        assert (model_dir / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    run = json.loads((model_dir / "cifllm_run.json").read_text())
    assert run["global_step"] == 8 and run["preset"] == "tiny"
    assert model.config.max_position_embeddings == run["max_position_embeddings"] == tok.model_max_length
    assert model.config.use_cache is True
    assert tok("data_")["input_ids"][0] == model.config.bos_token_id
    # recompute the validation loss the way the Trainer did (fp32, batches of 4, last partial batch dropped)
    from cifllm.data.corpus import load_corpus
    from cifllm.training.data import pack_documents as pack

    val = load_corpus(tiny_corpus, split="val")
    docs = tokenize_texts(list(val["text"]), tok)
    blocks, _ = pack(docs.lengths, run["block_size"], seed=0)
    ds = PackedBlocks(docs, blocks, run["block_size"], tok.pad_token_id, tok.bos_token_id)
    losses, sizes = [], []
    with torch.no_grad():
        for start in range(0, len(ds) - len(ds) % 4, 4):
            rows = [ds[i] for i in range(start, start + 4)]
            batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
            losses.append(model(**batch, use_cache=False).loss.item())
            sizes.append(4)
    assert np.average(losses, weights=sizes) == pytest.approx(run["eval_loss"], abs=1e-4)
    out = model.generate(**tok(["data_"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 7)


def test_grad_accumulation_matches_bigger_batch(tiny_corpus, tmp_path):
    def curve(out: str, **kw) -> list[float]:
        # packed: the block order does not depend on the batch size (grouped batches are formed per batch size)
        cfg = make_cfg(tiny_corpus, tmp_path / out, max_steps=4, logging_steps=1, eval_steps=0, save_steps=100, data_mode="packed", **kw)
        pretrain(cfg)
        recs = [json.loads(x) for x in (tmp_path / out / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r]

    big = curve("b4", batch_size=4, grad_accum=1)
    acc = curve("b2x2", batch_size=2, grad_accum=2)
    assert len(big) == 4
    np.testing.assert_allclose(acc, big, rtol=2e-4)


def test_grouped_mode_runs_with_source_weights(tiny_corpus, tmp_path):
    cfg = make_cfg(tiny_corpus, tmp_path / "g", max_steps=3, eval_steps=0, save_steps=100, source_weights={"prototypes": 2.0})
    assert cfg.data_mode == "grouped"  # the default
    model_dir = pretrain(cfg)
    run = json.loads((model_dir / "cifllm_run.json").read_text())
    assert run["data_mode"] == "grouped" and np.isfinite(run["eval_loss"])
    assert run["data"]["train"]["n_documents"] == run["data"]["train"]["n_cifs"]
    sw = run["data"]["source_weights"]
    assert sw["train_rows_after"] == 2 * sw["train_cifs_before"] == run["data"]["train"]["n_cifs"]


def test_source_repeats_is_a_fixed_hashed_fraction():
    from cifllm.training.data import source_repeats

    ids = [f"r{i}" for i in range(4000)]
    srcs = [["perov"]] * 2000 + [["mp"]] * 1000 + [["perov", "mp"]] * 1000
    assert source_repeats(ids, srcs, {}).tolist() == [1] * 4000
    r = source_repeats(ids, srcs, {"perov": 0.25})
    assert set(r[:2000].tolist()) == {0, 1} and 400 < r[:2000].sum() < 600  # ~25%, binomial sd ~19
    assert r[2000:].tolist() == [1] * 2000  # a CIF also in an unweighted source keeps weight 1 (the largest)
    assert (source_repeats(ids, srcs, {"perov": 0.25}) == r).all()  # deterministic
    assert not (source_repeats(ids, srcs, {"perov": 0.25}, seed=1) == r).all()  # the seed picks the subset
    r2 = source_repeats(ids, srcs, {"perov": 2.5, "mp": 0.0})
    assert set(r2[:2000].tolist()) == {2, 3} and set(r2[3000:].tolist()) <= {2, 3} and r2[2000:3000].sum() == 0
    with pytest.raises(ValueError, match="source_weights"):
        make_cfg("c", "o", source_weights={"perov": -1})


def test_per_source_validation_loss(trained_run, tiny_corpus):
    from cifllm.evaluation.nll import corpus_groups, nll_by_group

    g = corpus_groups(tiny_corpus, split="val", max_per_group=3)
    assert set(g) == {"all", "real", "source:prototypes"} and all(0 < len(v) <= 3 for v in g.values())
    assert corpus_groups(tiny_corpus, split="val", hypothetical=("prototypes",))["real"] == []
    r = nll_by_group(trained_run / "model", {**g, "empty": []})
    assert set(r) == set(g) and all(np.isfinite(v["nll"]) and v["n_texts"] == len(g[k]) for k, v in r.items())


# -- bad input: clear errors before any long work --------------------------------------------------------------------


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(make_cfg(tmp_path / "nope", tmp_path / "r"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a cifllm corpus"):
        prepare(make_cfg(tmp_path / "empty", tmp_path / "r"))


def _corpus_copy(tiny_corpus: Path, dst: Path, **manifest_changes) -> Path:
    shutil.copytree(tiny_corpus, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def test_corpus_without_training_rows(tiny_corpus, tmp_path):
    corpus = _corpus_copy(tiny_corpus, tmp_path / "c", n_train=0)
    with pytest.raises(ValueError, match="no training rows"):
        prepare(make_cfg(corpus, tmp_path / "r"))


def test_tokenizer_corpus_mismatch(tiny_corpus, tmp_path):
    corpus = _corpus_copy(tiny_corpus, tmp_path / "c", tokenizer_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        prepare(make_cfg(corpus, tmp_path / "r"))


def test_unknown_preset_and_bad_values(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        make_cfg(tiny_corpus, tmp_path / "r", preset="huge")
    with pytest.raises(ConfigError, match="warmup_steps"):
        make_cfg(tiny_corpus, tmp_path / "r", max_steps=10, warmup_steps=10)
    with pytest.raises(ConfigError, match="unknown key"):
        make_cfg(tiny_corpus, tmp_path / "r", learning_rate=1.0)
    with pytest.raises(ConfigError, match="shorter than the longest CIF"):
        prepare(make_cfg(tiny_corpus, tmp_path / "r", max_position_embeddings=64))


def test_cli_reports_bad_input_without_traceback(tiny_corpus, tmp_path, capsys):
    from cifllm.cli import main

    assert main(["pretrain", f"corpus={tiny_corpus}", f"out={tmp_path / 'r'}", "preset=huge"]) == 2
    assert "unknown model preset 'huge'" in capsys.readouterr().err
    assert main(["pretrain", f"corpus={tmp_path / 'nope'}", f"out={tmp_path / 'r'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["pretrain", "--check", f"corpus={tiny_corpus}", f"out={tmp_path / 'r'}"]) == 0
    assert "# ok: longest CIF" in capsys.readouterr().out


@pytest.mark.parametrize(
    "ds, message",
    [
        ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param needs ZeRO stage 3"),
        ({"zero_optimization": {"stage": 3}}, "stage3_gather_16bit_weights_on_model_save"),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "both true"),
        ({"train_micro_batch_size_per_gpu": 3}, "contradicts batch_size=4"),
        ({"gradient_accumulation_steps": 8}, "contradicts grad_accum=1"),
        ({"bf16": {"enabled": True}}, "run uses fp32"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove the 'scheduler' block"),
        ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}, "stage3_gather_16bit_weights_on_model_save": True}}, "no nvme_path"),
    ],
)
def test_contradictory_deepspeed_config(tiny_corpus, tmp_path, ds, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(DeepSpeedConfigError, match=message):
        prepare(make_cfg(tiny_corpus, tmp_path / "r", deepspeed=str(path)))


@pytest.mark.parametrize("name", ["zero3_offload.json", "zero2.json"])
def test_shipped_deepspeed_configs_are_consistent(tiny_corpus, tmp_path, name):
    prep = prepare(make_cfg(tiny_corpus, tmp_path / "r", deepspeed=str(REPO / "train" / "deepspeed" / name)))
    zero = prep.deepspeed["zero_optimization"]
    if name == "zero3_offload.json":
        assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
        for key in ("offload_param", "offload_optimizer"):
            assert zero[key] == {"device": "cpu", "pin_memory": True}
    else:
        assert zero["stage"] == 2 and "offload_param" not in zero


def test_existing_run_needs_resume_and_same_config(trained_run, tmp_path):
    from cifllm.training.config import merge_for_resume

    cfg = load_pretrain_config(trained_run / "config.yaml")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        prepare(cfg)
    with pytest.raises(ConfigError, match=r"cannot resume .*\(train\.lr: run has 0.001, given 0.01\)"):
        merge_for_resume(cfg, {"lr": 0.01})
    assert merge_for_resume(cfg, {"logging_steps": 1}).logging_steps == 1


def test_resume_picks_newest_finished_checkpoint_and_rejects_corrupt_ones(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = load_pretrain_config(run / "config.yaml", {"out": str(run)})
    assert prepare(cfg, resume=True).resume_from == run / "checkpoint-8"

    weights = run / "checkpoint-8" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match its recorded SHA-256"):
        prepare(cfg, resume=True)
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(CheckpointError, match="truncated"):
        prepare(cfg, resume=True)

    (run / "checkpoint-8" / MARKER).unlink()  # as if killed while saving step 8
    prep = prepare(cfg, resume=True)
    assert prep.resume_from == run / "checkpoint-4" and prep.incomplete == [run / "checkpoint-8"]


def test_wsd_schedule_and_cooldown_branch(tiny_corpus, tmp_path):
    """A wsd run holds the peak rate between warm-up and decay; a branch from one of its checkpoints continues exactly
    where it was (same weights, batch and rate at the first step) and then decays over its own last steps."""
    common = dict(lr_schedule="wsd", save_steps=4, eval_steps=0, logging_steps=1)
    pretrain(make_cfg(tiny_corpus, tmp_path / "main", max_steps=10, decay_steps=4, **common))
    log = [json.loads(x) for x in (tmp_path / "main" / "log.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["learning_rate"] for r in log if "loss" in r}
    loss = {r["step"]: r["loss"] for r in log if "loss" in r}
    assert [lr[s] for s in (3, 4, 5, 6)] == [1e-3] * 4  # stable phase at the peak
    assert lr[7] == 1e-3 and 1e-4 <= lr[10] < lr[9] < lr[8] < 1e-3  # decay over the last 4 steps (from the peak)

    branch = make_cfg(tiny_corpus, tmp_path / "cool", max_steps=7, decay_steps=3, init_from=str(tmp_path / "main" / "checkpoint-4"), **common)
    model = pretrain(branch)
    assert (model / "model.safetensors").is_file() and (tmp_path / "cool" / "checkpoint-4").is_dir()
    blog = [json.loads(x) for x in (tmp_path / "cool" / "log.jsonl").read_text().splitlines()]
    blr = {r["step"]: r["learning_rate"] for r in blog if "loss" in r}
    bloss = {r["step"]: r["loss"] for r in blog if "loss" in r}
    assert sorted(blr) == [5, 6, 7]
    assert blr[5] == 1e-3 and bloss[5] == pytest.approx(loss[5], rel=1e-4)  # same weights, optimizer, batch and rate
    assert 1e-4 <= blr[7] < blr[6] < 1e-3
    run = json.loads((model / "cifllm_run.json").read_text())
    assert run["global_step"] == 7 and run["resumed_from"].endswith("checkpoint-4")
    # bad branches: not a checkpoint, a step not before max_steps
    with pytest.raises(CheckpointError, match="init_from"):
        prepare(make_cfg(tiny_corpus, tmp_path / "x", max_steps=7, init_from=str(tmp_path / "main")))
    with pytest.raises(ConfigError, match="max_steps"):
        prepare(make_cfg(tiny_corpus, tmp_path / "y", max_steps=4, warmup_steps=1, init_from=str(tmp_path / "main" / "checkpoint-4")))
