"""The base class of cifllm's user errors (bad config, path, input file, task, model).

This module imports nothing from cifllm, so every layer can subclass :class:`CifllmError`. ``cifllm <stage>`` turns
any such error into one line on stderr and exit code 2 (``--debug``: traceback); see :mod:`cifllm.cli`.
"""

from __future__ import annotations

__all__ = ["CifllmError"]


class CifllmError(Exception):
    """A problem with what the user gave cifllm (not a bug in cifllm): its message names the thing and the reason."""
