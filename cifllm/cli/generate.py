"""``cifllm generate``: print sampled CIFs for a composition (or de novo), each after a ``# sample i: ...`` line that
names both verdicts (CDVAE-valid, CrystaLLM-consistent), each with the reason it failed. Parses the flags and calls
:func:`cifllm.api.generate`, the one front-end (sampling defaults: :data:`cifllm.core.sampling.SAMPLING`).

Examples::

    cifllm generate --composition Na4Cl4 --space-group Fm-3m -n 3
    cifllm generate --composition SrTiO3 --model runs/tiny/model --temperature 0.8 --top-k 10
    cifllm generate --de-novo -n 5 --model org/name
    cifllm generate --composition Na4Cl4 --engine vllm --no-constrained
    cifllm generate --composition YBa2Cu3O7 --model M --adapter runs/finetune-tc_top/adapter --property tc=90
    cifllm generate --composition SrTiO3 --rank energy -n 3 --candidates 64 --space-groups 4
    cifllm generate --composition SrTiO3 --rank energy -n 3 --pool hybrid --templates data/corpus --relax

Ranked output: each CIF follows ``# rank i: E ... eV/atom, E_hull ... eV/atom ...`` (the potential's energy per atom
and its E_hull on the DFT-anchored hull: a screening number, not DFT) and ``# candidate j: <verdicts>``.
"""

from __future__ import annotations

import argparse
import sys

from cifllm.api import POOLS, Sample, generate
from cifllm.core.errors import CifllmError
from cifllm.core.report import on_off
from cifllm.core.sampling import SAMPLING
from cifllm.evaluation.ranking import RANK_BY
from cifllm.sampling.prompts import PromptError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--composition", "-c", default=None, help="cell formula of the prompt, e.g. Na4Cl4 or SrTiO3")
    p.add_argument("--space-group", "-s", default=None, help="space-group symbol or number, e.g. Fm-3m or 225")
    p.add_argument("--z", type=int, default=None, help="formula units per cell (multiplies --composition)")
    p.add_argument("--de-novo", action="store_true", help="no composition: the model writes the whole CIF")
    p.add_argument("--model", "-m", default="default", help="'default', a model folder or a Hub id org/name (default: %(default)s)")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="samples to print (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=SAMPLING.temperature, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=SAMPLING.top_k, help="0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=SAMPLING.top_p, help="1.0 = off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=SAMPLING.max_new_tokens, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="sampling engine (default: %(default)s)")
    p.add_argument(
        "--constrained", action=argparse.BooleanOptionalAction, default=None,
        help="the constraint engine: only consistent cif-v2 text is written (default: on for cif-v2 models, off for cif-v1)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the validity checks")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (cifllm finetune) trained on --model")
    p.add_argument("--rank", choices=RANK_BY, default="none", help="rank the candidates: none (sample order), likelihood (the model's mean log-probability per token) or energy (E_hull of the potential's energy on the DFT-anchored hull; not DFT) (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=None, help="candidates drawn before ranking; the best -n are printed (default: max(64, n) when ranking)")
    p.add_argument("--space-groups", type=int, default=0, metavar="K", help="spread the candidates over the K space groups the model finds likeliest among those that can realize the composition (default: 0 = the model chooses)")
    p.add_argument("--relax", action="store_true", help="with --rank energy: relax the best 2n candidates (FIRE, fmax 0.1 eV/A, <= 300 steps), re-rank and print the relaxed structures")
    p.add_argument("--potential", choices=("chgnet", "sevennet"), default="chgnet", help="universal potential for --rank energy (sevennet needs the mlip7 extra) (default: %(default)s)")
    p.add_argument("--pool", choices=POOLS, default="model", help="candidates from the model, from templates (element substitution into --templates) or both (hybrid) (default: %(default)s)")
    p.add_argument("--templates", default=None, help="corpus folder whose structures the template candidates substitute into (for --pool hybrid/template), e.g. data/corpus")
    p.add_argument("--property", action="append", default=[], metavar="NAME=VALUE", help="condition on a property, e.g. tc=90 (needs an adapter trained on it; repeatable)")


def _block(s: Sample) -> str:
    """One sample as printed: comment lines (its rank and scores when ranked, its verdicts), then its CIF."""
    head = f"# {s.score_line()}\n" if s.rank is not None else ""
    label = f"candidate {s.index + 1}" if s.rank is not None else f"sample {s.index + 1}"
    return f"{head}# {label}: {s.verdicts()}\n{s.cif_text.rstrip()}\n"


def run(args: argparse.Namespace) -> int:
    conditions = {}
    for item in args.property:
        if "=" not in item:
            raise CifllmError(f"--property {item!r}: expected NAME=VALUE, e.g. tc=90")
        k, v = item.split("=", 1)
        try:
            conditions[k.strip()] = float(v)
        except ValueError:
            raise CifllmError(f"--property {item!r}: {v!r} is not a number") from None
    if args.de_novo and (args.composition or args.space_group is not None or args.z is not None):
        raise PromptError("--de-novo excludes --composition, --space-group and --z")
    if not args.de_novo and not args.composition:
        raise PromptError("give --composition (e.g. Na4Cl4) or --de-novo")
    samples = generate(
        composition=args.composition, space_group=args.space_group, n=args.num_samples, model=args.model, engine=args.engine,
        constrained=args.constrained, seed=args.seed, z=args.z, adapter=args.adapter, conditions=conditions or None,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_new_tokens=args.max_new_tokens, device=args.device,
        check=not args.no_check, rank=args.rank, candidates=args.candidates, space_groups=args.space_groups, relax=args.relax,
        potential=args.potential, pool=args.pool, templates=args.templates,
    )
    sys.stdout.write("\n".join(_block(s) for s in samples))
    summary = f"{len(samples)} samples, constraint engine {on_off(samples[0].constrained if samples else None)}"
    if not args.no_check:
        summary += f", {sum(bool(s.valid) for s in samples)} CDVAE-valid, {sum(bool(s.consistent) for s in samples)} CrystaLLM-consistent"
    adh = [s.prompt_adherence for s in samples if s.prompt_adherence is not None]
    if adh:
        summary += f", {sum(adh)}/{len(adh)} keep the prompt's composition"
    print(f"cifllm generate: {summary}", file=sys.stderr)
    return 0
