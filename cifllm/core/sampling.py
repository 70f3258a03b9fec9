"""The one source of sampling defaults: :data:`SAMPLING`, read by every entry point.

Precedence (highest first), the same in every entry point:

1. a value the user gives - a CLI flag (``cifllm generate --temperature``), a config key (``cifllm sample
   temperature=``, ``cifllm demo``/``bench`` keys, a shipped YAML), or a keyword argument (``cifllm.generate``);
2. :data:`SAMPLING`.

The model's ``generation_config.json`` is written *from* :data:`SAMPLING` (:func:`cifllm.modeling.
sampling_generation_config`), so plain ``transformers`` ``model.generate`` samples the same way; cifllm's own entry
points never read it (one source, not two that can drift). ``max_new_tokens`` there is the model's context instead.

Why these values: T 0.7 / top-k 10 was the best cell of the T x top-k grid with the constraint engine (BENCHMARKS.md,
"Constraint engine": 74.5% CDVAE-valid de novo, 200 samples, 95% CI 68-80%, vs 66.5% at T 1.0 without top-k and
58.5% at T 1.0 / top-k 10; CrystaLLM samples at 0.8 / 10).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SAMPLING", "SamplingDefaults"]


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling settings every entry point starts from (see the module docstring for the precedence)."""

    temperature: float = 0.7  #: softmax temperature; 0 = greedy
    top_k: int = 10  #: keep the k most likely tokens; 0 = off
    top_p: float = 1.0  #: nucleus filter; 1.0 = off
    max_new_tokens: int = 1024  #: generated tokens per sample (clipped to the model's context)
    do_sample: bool = True  #: sample, never greedy (what generation_config.json tells plain model.generate)


#: the defaults of ``cifllm generate``/``sample``/``demo``/``bench``, the Python API and ``GenerationParams``
SAMPLING = SamplingDefaults()
