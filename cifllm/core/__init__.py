"""The base layer: contracts every stage shares, importing no stage.

* :mod:`cifllm.core.errors` - :class:`~cifllm.core.errors.CifllmError`, the one base class of user errors;
* :mod:`cifllm.core.config` - frozen-dataclass configs from YAML + ``key=value`` overrides, ``--help`` text;
* :mod:`cifllm.core.records` - the file names of run, corpus, split and adapter folders, and the adapter record;
* :mod:`cifllm.core.models` - where a model folder is (the bundled default, a folder, a Hub id);
* :mod:`cifllm.core.report` - number formatting shared by every report.

This package imports nothing but :mod:`cifllm.utils` and its own modules; importing it is cheap (no torch).
"""
