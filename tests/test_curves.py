"""Loss curves from log.jsonl: parsing (last record of a step wins, bad lines named) and the plot."""

import json

import pytest

from cifllm.core.errors import CifllmError
from cifllm.training.curves import plot_loss_curves, read_loss_curve


def _log(tmp_path, recs):
    d = tmp_path / "run"
    d.mkdir()
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_read_and_plot(tmp_path):
    d = _log(
        tmp_path,
        [
            {"step": 0, "eval_loss": 6.2, "num_input_tokens_seen": 0},
            {"step": 25, "loss": 1.5, "tokens_seen": 1000},
            {"step": 50, "loss": 1.2, "tokens_seen": 2000},
            {"step": 50, "eval_loss": 1.1, "num_input_tokens_seen": 2000},
            {"step": 100, "eval_loss": 0.9, "num_input_tokens_seen": 4000},
            {"step": 100, "eval_loss": 0.95, "num_input_tokens_seen": 4000},
        ],
    )
    c = read_loss_curve(d, "r")
    assert c.train == [(25, 1000, 1.5), (50, 2000, 1.2)]
    assert c.eval == [(0, 0, 6.2), (50, 2000, 1.1), (100, 4000, 0.95)]
    assert c.best_eval == (100, 4000, 0.95)
    png = plot_loss_curves([c], tmp_path / "curves.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_line_named(tmp_path):
    d = _log(tmp_path, [{"step": 1, "loss": 1.0}])
    with open(d / "log.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(CifllmError, match="line 2 is not JSON"):
        read_loss_curve(d)
    with pytest.raises(CifllmError, match="no training log"):
        read_loss_curve(tmp_path)
