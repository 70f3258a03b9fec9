"""The base class of cifllm's user errors (bad config, path, input file, task, model).

This module imports nothing from cifllm, so every subpackage can subclass :class:`CifllmError` without an import
cycle. ``cifllm <stage>`` turns any such error into one line on stderr and exit code 2 (``--debug``: traceback).
"""

from __future__ import annotations

__all__ = ["CifllmError"]


class CifllmError(Exception):
    """A problem with what the user gave cifllm (not a bug in cifllm): its message names the thing and the reason."""
