"""What the host CPU can do, read from /proc/cpuinfo (or `lscpu`): its model, cores and the vector
and matrix extensions that decide conv and matmul speed. No jax at import."""

from __future__ import annotations

import functools
import os
import subprocess

# The extensions reported, as /proc/cpuinfo names them.
EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
# Extensions with bf16 dot-product instructions (VDPBF16PS, AMX TDPBF16PS): with them XLA:CPU's
# bf16 matrix products (YNNPACK) run faster than float32 ones; without them they are emulated.
BF16_EXTENSIONS = ("avx512_bf16", "amx_bf16")


def _proc_cpuinfo() -> tuple[str | None, set[str], set[tuple[str, str]]]:
    model, flags, cores = None, set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return model, flags, cores
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip().lower(), v.strip()) for k, _, v in
            (line.partition(":") for line in block.splitlines()) if k.strip())
        model = model or fields.get("model name") or fields.get("hardware")
        flags |= set((fields.get("flags") or fields.get("features") or "").split())
        if "physical id" in fields and "core id" in fields:
            cores.add((fields["physical id"], fields["core id"]))
    return model, flags, cores


def _lscpu() -> tuple[str | None, set[str]]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, set()
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(":") for line in out.splitlines())}
    return fields.get("model name"), set(fields.get("flags", "").split())


@functools.cache
def cpu_info() -> dict:
    """CPU model, logical / usable / physical core counts and `EXTENSIONS` (None if unknown)."""
    model, flags, cores = _proc_cpuinfo()
    if not model or not flags:
        lscpu_model, lscpu_flags = _lscpu()
        model, flags = model or lscpu_model, flags or lscpu_flags
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = None
    return {"model_name": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "physical_cores": len(cores) or None,
            "extensions": {e: e in flags for e in EXTENSIONS} if flags else None}


def has_bf16_units() -> bool:
    """Whether the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    extensions = cpu_info()["extensions"] or {}
    return any(extensions.get(e) for e in BF16_EXTENSIONS)
