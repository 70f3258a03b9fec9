"""cifllm: crystal structures as CIF text from language models.

The Python API (:mod:`cifllm.api`) is reachable from the package: ``cifllm.generate(...)``, ``cifllm.evaluate(...)``,
``cifllm.Sample``. It is loaded on first use (module ``__getattr__``), so ``import cifllm`` stays cheap (no torch).
"""

__all__ = ["Sample", "evaluate", "generate"]


def __getattr__(name: str):  # noqa: ANN202 (no typing import: keeps `import cifllm` cheap)
    if name in __all__:
        # the API pulls in torch and pymatgen: loaded when first asked for, not on `import cifllm`
        from cifllm import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifllm' has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *__all__])
