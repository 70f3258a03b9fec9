"""Loss curves of training runs from their ``log.jsonl`` (the records :class:`~cifllm.training.callbacks.JsonlLogCallback`
writes): training loss and validation loss (nats/token) against tokens seen, one line pair per run.

A branch run (``init_from``) starts at its parent's step; its curve is drawn from there, so a cooldown branch reads as
the tail of its parent's curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cifllm.core.errors import CifllmError
from cifllm.core.records import LOG_FILE

__all__ = ["LossCurve", "read_loss_curve", "plot_loss_curves"]


@dataclass(frozen=True)
class LossCurve:
    """One run's curve: (step, tokens seen, loss) for training logs and for evaluations."""

    label: str
    train: list[tuple[int, int, float]] = field(default_factory=list)
    eval: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def best_eval(self) -> tuple[int, int, float] | None:
        """The evaluation with the lowest loss, or None when the run was never evaluated."""
        return min(self.eval, key=lambda e: e[2]) if self.eval else None


def read_loss_curve(run_dir: str | Path, label: str | None = None) -> LossCurve:
    """Read ``<run_dir>/log.jsonl``. A record that is not JSON raises :class:`CifllmError` naming the file and line;
    a step logged twice (a resumed run re-logs nothing before its checkpoint, but an old log may) keeps the last."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise CifllmError(f"{path}: no training log")
    train: dict[int, tuple[int, int, float]] = {}
    ev: dict[int, tuple[int, int, float]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CifllmError(f"{path}: line {i} is not JSON ({e.msg})") from None
        step = int(rec.get("step", 0))
        seen = int(rec.get("tokens_seen", rec.get("num_input_tokens_seen", 0)) or 0)
        if "loss" in rec:
            train[step] = (step, seen, float(rec["loss"]))
        if "eval_loss" in rec:
            ev[step] = (step, seen, float(rec["eval_loss"]))
    return LossCurve(label or Path(run_dir).name, sorted(train.values()), sorted(ev.values()))


def plot_loss_curves(curves: list[LossCurve], out_png: str | Path, title: str = "") -> Path:
    """Training (thin) and validation (markers) loss against millions of tokens seen, log-scale loss; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, c in enumerate(curves):
        color = f"C{i}"
        if c.train:
            ax.plot([t[1] / 1e6 for t in c.train], [t[2] for t in c.train], color=color, lw=0.8, alpha=0.6, label=f"{c.label} train")
        ev = [e for e in c.eval if e[1] > 0]  # step 0 (random weights, ~6 nats) would flatten the plot
        if ev:
            ax.plot([e[1] / 1e6 for e in ev], [e[2] for e in ev], color=color, marker="o", ms=4, lw=1.5, label=f"{c.label} validation")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
