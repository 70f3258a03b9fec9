"""Per-item time limits for the evaluation stage: the shared mechanism lives in :mod:`cifllm.utils.limits` (data
preparation uses it too); this name is kept for code that imported it from here."""

from cifllm.utils.limits import ItemTimeout, default_workers, map_with_time_limit

__all__ = ["ItemTimeout", "default_workers", "map_with_time_limit"]
