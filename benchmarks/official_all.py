"""`compare_official.py --all`: every system against its official code, and the table the docs show.

Each comparison is one run of compare_official.py in a subprocess (its own JSON line, printed as it
arrives), for each system whose official clone is given:
  train      train + inference at batch `--batch` (default 8) and the system's official size
             (DIRL 224, MadisNet 256, RainNet 256): float32 against float32 and, on a CPU with bf16
             units, bfloat16 against torch.autocast (DIRL only: RainNet's optimize_parameters runs
             forward and backward in one call, with no autocast forward, and the official
             MadisNet's autocast train step exits 1 at batch 8 / 256 px on a 24 GB machine)
  batch 1    inference only, batch 1 (what predict.py and the demo run): float32 and, with bf16
             units, bfloat16 against autocast
  rainnet    also inference only at batch `--batch` in bfloat16 against autocast (with bf16 units)
MadisNet's train comparison always runs one side at a time (`--one_at_a_time`): its four sides
at batch 8, 256 px need more than 24 GB together (the official float32 side alone 16 GB).
The table lists jirl / official per row, with the CPU model and its extensions above it. With
`--update_docs FILE`, the block between `<!-- compare_official --all -->` and `<!-- end -->` in
FILE is replaced by the table and the command that produced it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import update_docs

SYSTEMS = (("dirl", "official_dirl", 224), ("madisnet", "official_madisnet", 256),
           ("rainnet", "official_rainnet", 256))
MARKER = "<!-- compare_official --all -->"


def runs(paths: dict[str, str], batch: int, bf16: bool) -> list[dict]:
    """The comparisons of `--all`: {system, label, args} for each system whose path is given."""
    out = []
    for system, flag, size in SYSTEMS:
        if not paths.get(flag):
            continue
        common = [f"--config={system}", f"--{flag}={paths[flag]}", f"--size={size}"]
        # float32 only for RainNet (its optimize_parameters has no autocast forward) and MadisNet
        # (the official autocast train step exits 1 at batch 8 / 256 px on a 24 GB machine)
        float32_only = system in ("rainnet", "madisnet") or not bf16
        train_precisions = "float32" if float32_only else "float32,bfloat16"
        out.append({"system": system, "label": "train", "args": [
            *common, f"--batch={batch}", f"--precisions={train_precisions}",
            *(["--one_at_a_time"] if system == "madisnet" else [])]})
        out.append({"system": system, "label": "batch 1", "args": [
            *common, "--batch=1", "--inference_only",
            "--precisions=" + ("float32,bfloat16" if bf16 else "float32")]})
        if system == "rainnet" and bf16:
            out.append({"system": system, "label": "bf16 inference", "args": [
                *common, f"--batch={batch}", "--inference_only", "--precisions=bfloat16"]})
    return out


def rows(result: dict) -> list[dict]:
    """Table rows of one compare_official result: one per (work, precision) it timed."""
    out = []
    for side in result["sides"]:
        if not side.startswith("jirl"):
            continue
        suffix = side.removeprefix("jirl")
        precision = suffix.lstrip("/") or "float32"
        official, jirl = result["official" + suffix], result[side]
        for work, key in (("train", "train_images_per_sec"), ("inference", "inference_images_per_sec")):
            if jirl.get(key) is None or official.get(key) is None:
                continue
            out.append({"system": result["model"], "work": work, "batch": result["batch"],
                        "size": result["size"], "precision": precision,
                        "official": official[key], "jirl": jirl[key],
                        "ratio": jirl[key] / official[key]})
    return out


def table(results: list[dict], cpu: dict, command: str) -> str:
    """Markdown: the CPU, the command, then one row per comparison."""
    ext = ", ".join(k for k, v in (cpu.get("extensions") or {}).items() if v) or "unknown"
    lines = [f"CPU: {cpu.get('model_name')}, {cpu.get('usable_cpus')} cores ({ext}).",
             f"Command: `{command}`", "",
             "| system | work | batch | size | jirl precision (official) | official img/s | "
             "jirl img/s | jirl / official |", "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for r in rows(result):
            official = "autocast bf16" if r["precision"] == "bfloat16" else "float32"
            lines.append(f"| {r['system']} | {r['work']} | {r['batch']} | {r['size']} | "
                         f"{r['precision']} ({official}) | {r['official']:.3g} | {r['jirl']:.3g} | "
                         f"**{r['ratio']:.2f}** |")
    return "\n".join(lines)


def run_all(script: str, paths: dict[str, str], batch: int, passthrough: list[str],
            command: str, docs: str | None) -> int:
    """Runs every comparison, prints each JSON line and then the table; 1 if any failed."""
    from jirl.cpu import cpu_info, has_bf16_units

    results, failed = [], 0
    for run in runs(paths, batch, has_bf16_units()):
        proc = subprocess.run([sys.executable, script, *run["args"], *passthrough],
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed += 1
            err = proc.stderr.strip().splitlines()
            # the parent's own message ("compare_official: jirl/float32 side failed on 'train'
            # (rc -9)", -9: killed, e.g. for memory), then the end of the child's stderr
            cause = [line for line in err if line.startswith("compare_official:")]
            print(json.dumps({"system": run["system"], "run": run["label"], "rc": proc.returncode,
                              "error": cause + err[-5:]}), flush=True)
            continue
        print(lines[-1], flush=True)
        results.append(json.loads(lines[-1]))
    if not results:
        sys.exit("compare_official --all: give at least one of --official_dirl, "
                 "--official_madisnet, --official_rainnet" if not runs(paths, batch, False)
                 else "compare_official --all: every comparison failed")
    text = table(results, cpu_info(), command)
    print(text)
    if docs:
        update_docs(docs, MARKER, text)
    return 1 if failed else 0
