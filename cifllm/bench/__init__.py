"""The discovery benchmark: task definitions (``eval/tasks/*.yaml``), leakage-checked splits, metrics, runner."""
