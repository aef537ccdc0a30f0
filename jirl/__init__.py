"""jirl: inharmonious region localization in JAX/Flax."""

import os as _os

__version__ = "0.1.0"

# XLA flags jirl sets unless the user already chose them in XLA_FLAGS. XLA reads XLA_FLAGS once,
# when the first backend starts, so they must be in place before any jax computation: importing
# jirl does that. (Passing them as jax.jit `compiler_options` has no effect on these.)
#
# --xla_cpu_enable_concurrency_optimized_scheduler=false: on CPU, XLA's default scheduler starts
# every op as early as it can, which keeps the weight-gradient copy of each activation alive
# across the whole backward pass; the memory-minimizing scheduler frees each one as soon as it
# can (benchmarks/train_step.py reports the peak memory). CPU-only flag.
XLA_DEFAULT_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def _set_xla_flags() -> None:
    flags = _os.environ.get("XLA_FLAGS", "")
    for flag in XLA_DEFAULT_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    _os.environ["XLA_FLAGS"] = flags


_set_xla_flags()


# The public API, imported on first use so that `import jirl` stays light (jirl.inference).
_LAZY = ("Localizer", "Harmonizer", "binary_mask", "load_checkpoint")
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    """`jirl.Localizer`, `jirl.Harmonizer`, `jirl.binary_mask`, `jirl.load_checkpoint`."""
    if name in _LAZY:
        from jirl import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'jirl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
