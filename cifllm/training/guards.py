"""Checks that stop a training run before it starts when it could not train or validate at all.

Without them a corpus smaller than one batch "succeeds": the Trainer runs 0 optimizer steps (or 0 validation steps,
reporting no loss) and an untrained model is saved as if it were a result.
"""

from __future__ import annotations

from cifllm.core.errors import CifllmError

__all__ = ["NotEnoughDataError", "check_enough_data"]


class NotEnoughDataError(CifllmError, ValueError):
    """Too few training or validation sequences for one batch (raised before any training)."""


def check_enough_data(
    stage: str, where: str, n_train: int, n_val: int | None, batch_size: int, world_size: int = 1, drop_last: bool = True, unit: str = "sequences"
) -> None:
    """Raise :class:`NotEnoughDataError` unless one training step and (when there is a validation set) one validation
    step can run.

    ``n_train`` / ``n_val``: training / validation items after every filter (``n_val`` None: no validation set, which
    is allowed); ``batch_size`` per device and ``world_size`` devices: one step reads ``batch_size * world_size``
    items when the data loader drops the last partial batch (``drop_last``, pretraining), at least one item otherwise
    (fine-tuning: a training run on fewer items than one batch is refused all the same, since its "batch" would not
    be the configured one). ``unit`` names the items in the message (sequences, packed blocks, CIFs)."""
    need = batch_size * world_size
    if n_train < need:
        raise NotEnoughDataError(
            f"{stage}: {where} has {n_train} training {unit}, fewer than one batch ({batch_size} x {world_size} device(s) = {need}); "
            f"add data or lower batch_size"
        )
    if n_val is None:
        return
    need_val = need if drop_last else 1
    if n_val < need_val:
        raise NotEnoughDataError(
            f"{stage}: {where} has {n_val} validation {unit}, fewer than one validation batch ({need_val}); "
            f"add data, lower batch_size, or remove the validation split"
        )
