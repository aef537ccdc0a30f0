"""A fix for the Grain release jirl runs on, applied only where jirl starts Grain's workers."""

from __future__ import annotations

from absl import flags


def reads_unparsed_flags_safely() -> None:
    """Lets Grain start worker processes when absl flags are unparsed (outside ``absl.app``).

    Grain <= 0.2.18 reads ``--grain_enable_multiprocess_worker_profiling`` with ``FlagHolder.value``
    in the parent process when it starts its workers (``profiler.is_worker_profiling_enabled``),
    which raises ``UnparsedFlagAccessError`` unless flags were parsed; the workers themselves read
    flags only through ``config.get_or_default`` (or after setting them). This wraps that one
    function to use the flag's default while flags are unparsed, as Grain does since
    google/grain#1362, instead of marking the caller's flags as parsed. Idempotent; parsed flags
    are read as before.
    """
    try:
        from grain._src.core import profiler
    except ImportError:  # Grain reorganised: nothing to patch.
        return
    check = getattr(profiler, "is_worker_profiling_enabled", None)
    if check is None or getattr(check, "_jirl_unparsed_safe", False):
        return

    def is_worker_profiling_enabled() -> bool:
        try:
            return check()
        except flags.UnparsedFlagAccessError:
            return bool(flags.FLAGS["grain_enable_multiprocess_worker_profiling"].default)

    is_worker_profiling_enabled._jirl_unparsed_safe = True
    profiler.is_worker_profiling_enabled = is_worker_profiling_enabled
