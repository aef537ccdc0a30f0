"""Helpers shared by the benchmark scripts and their child processes (no flags, no jax at import).

`config_argv` re-creates a parsed `--config FILE[:variant] --config.key=value` flag for a child
process; `random_batch` is the fixed benchmark batch (NHWC numpy; with `real=True` also the real
image a harmonizer trains against, `is_harmonizer` says when); `JirlBench` wraps one jirl model's
jitted train step and inference forward on that batch; `cpu_info` and `peak_rss_gb` describe the
machine and a process's memory.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # jirl and configs/ from this checkout (the scripts run as files)
    sys.path.insert(0, ROOT)
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "dirl.py")

# Environment variables that set the frameworks' thread pools.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
              "KMP_AFFINITY", "OMP_PROC_BIND", "XLA_FLAGS")


def config_argv(flag) -> list[str]:
    """`--config=FILE[:variant]` and one `--config.key=value` per override of a parsed config flag.

    Built from the parsed values (not from sys.argv), so that every spelling absl accepts (`--config
    X`, `--config.key value`, flag files) reaches a child process; non-string values are written
    as Python literals, which config_flags parses back to the same value.
    """
    from ml_collections import config_flags

    args = [f"--{flag.name}={config_flags.get_config_filename(flag)}"]
    for key, value in config_flags.get_override_values(flag).items():
        text = value if isinstance(value, str) else repr(value)
        args.append(f"--{flag.name}.{key}={text}")
    return args


def config_overrides(flag) -> dict:
    """The `--config.key=value` overrides of a parsed config flag, JSON-friendly."""
    from ml_collections import config_flags

    return {k: v if isinstance(v, bool | int | float | str) or v is None else repr(v)
            for k, v in config_flags.get_override_values(flag).items()}


def random_batch(batch: int, size: int, seed: int = 0, real: bool = False) -> dict[str, np.ndarray]:
    """The benchmark batch: N(0, 1) images [B,S,S,3] (ImageNet-normalized scale) and a rectangle mask.

    `real=True` (a harmonizer's batch, RainNet's): also "real", a second N(0, 1) image drawn after
    the first from the same generator, so "image" and "mask" are the same as without it. Both
    images stay N(0, 1) although RainNet's data are in [-1, 1]: the scale changes no amount of
    work, and both sides of a comparison get the same arrays.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    mask = np.zeros((batch, size, size, 1), np.float32)
    mask[:, size // 4:size // 2, size // 3:size // 2] = 1
    out = {"image": image, "mask": mask}
    if real:
        out["real"] = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    return out


def is_harmonizer(config) -> bool:
    """Whether the batch of `config.model`'s task carries the real image (a harmonizer's
    does; imports jirl)."""
    from jirl.models import resolve_spec

    return "real" in resolve_spec(config.model).task.batch_keys


def seconds_per_call(fn, calls: int) -> float:
    """Seconds per call of `fn` (which blocks until its result is ready), after one warm-up."""
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def digest(*arrays: np.ndarray) -> str:
    """A short SHA-256 of arrays' bytes (to show that two processes saw the same inputs)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def peak_rss_gb() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux) in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb() -> float | None:
    """This process's current resident memory in GiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return None


def thread_env() -> dict:
    """The thread-related environment variables that are set."""
    return {k: os.environ[k] for k in THREAD_ENV if k in os.environ}


def model_config_mismatch(model_cfg, reference) -> list[str]:
    """Keys of `reference` (a config.model) whose value differs in `model_cfg` (tuples vs lists equal)."""
    norm = lambda v: tuple(v) if isinstance(v, list | tuple) else v
    return [k for k in reference if norm(model_cfg.get(k)) != norm(reference[k])]


class JirlBench:
    """One jirl model's jitted train step and inference forward on one fixed batch.

    Built as the training loop builds them: the train state replicated over a one-axis mesh, the
    train step jitted with the state donated and compiled ahead of time (then the compiler's freed
    memory returned to the OS; a model with `train_phases`, RainNet, runs all its phases, D then
    G, in one step), the inference forward `model.apply(image, train=False, **model_inputs)`:
    its "mask" for a localization model, its "harmonized" image for a harmonization model
    (whose task's batch carries "real": `random_batch(real=True)`;
    its mask is a model input, `spec.model_inputs`).
    """

    def __init__(self, config, batch: dict[str, np.ndarray]):
        import jax

        from jirl.models import build_model, init_model_variables
        from jirl.runtime import mesh as jmesh
        from jirl.training.optim import make_optimizer
        from jirl.training.state import create_train_state
        from jirl.training.steps import make_train_step

        self._jax = jax
        spec, model = build_model(config)
        self.harmonizer = "real" in spec.task.batch_keys
        # what the train step minimizes: the objective, or each phase's loss in order
        self.loss_name = ("objective" if not spec.train_phases else "SPEC.train_phases: " + ", then ".join(
            f"{p.loss.__name__} ({'/'.join(p.groups)})" for p in spec.train_phases))
        self.keys = keys = spec.task.batch_keys
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"the {spec.name} benchmark batch lacks {missing} (a harmonizer's needs "
                             "random_batch(..., real=True))")
        mesh = jmesh.make_mesh()
        repl = jmesh.replicated(mesh)
        self.state = jax.device_put(create_train_state(
            model, make_optimizer(config.optimizer, 1000, spec), init_model_variables(config, model)), repl)
        self.batch = jmesh.put_batch(batch, mesh, keys=keys)
        self.batch_size = int(batch["image"].shape[0])
        self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        self._train_jit = jax.jit(make_train_step(spec, config), donate_argnums=0,
                                  out_shardings=(repl, repl))
        # the model's inputs beyond the image (a harmonizer's mask), arguments of the forward
        self.model_inputs = spec.model_inputs(self.batch) if spec.model_inputs is not None else {}
        # the primary output: the harmonized image, or the mask (a localizer's eval_masks entry)
        output = spec.primary_mask if self.harmonizer else "mask"
        self._infer_jit = jax.jit(lambda v, x, inputs: model.apply(v, x, train=False, **inputs)[output])
        self._step = self._infer = None

    def input_digest(self) -> str:
        """Digest of image, mask (and real, for a harmonizer), as the official sides compute it."""
        return digest(*(np.asarray(self.batch[k]) for k in self.keys))

    def compile_train(self) -> float:
        """Seconds to compile the train step (ahead of time, as the training loop does)."""
        from jirl.training.steps import compile_step

        t0 = time.perf_counter()
        self._step = compile_step(self._train_jit, self.state, self.batch)
        return time.perf_counter() - t0

    def compile_infer(self) -> float:
        """Seconds to compile the inference forward."""
        from jirl.training.steps import compile_step

        t0 = time.perf_counter()
        self._infer = compile_step(self._infer_jit, self.state.variables(), self.batch["image"],
                                   self.model_inputs)
        return time.perf_counter() - t0

    def train(self, steps: int) -> tuple[float, dict]:
        """(seconds, the last step's logs as floats) for `steps` train steps on the fixed batch."""
        logs = None
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, logs = self._step(self.state, self.batch)
        self._jax.block_until_ready(logs)
        seconds = time.perf_counter() - t0
        return seconds, {k: float(v) for k, v in logs.items()}

    def infer(self, batches: int) -> float:
        """Seconds for `batches` inference forwards of the fixed batch."""
        variables = self.state.variables()
        out = None
        t0 = time.perf_counter()
        for _ in range(batches):
            out = self._infer(variables, self.batch["image"], self.model_inputs)
        self._jax.block_until_ready(out)
        return time.perf_counter() - t0



def update_docs(path: str, marker: str, text: str) -> None:
    """Replaces the block of Markdown file `path` between the line `marker` and the next
    `<!-- end -->` with `text` (atomically); refuses a file without them."""
    end_marker = "<!-- end -->"
    with open(path) as f:
        doc = f.read()
    if marker not in doc or end_marker not in doc[doc.index(marker):]:
        sys.exit(f"{path} has no {marker} ... {end_marker} block to replace")
    start = doc.index(marker) + len(marker)
    end = doc.index(end_marker, start)
    with open(path + ".tmp", "w") as f:
        f.write(doc[:start] + "\n" + text + "\n" + doc[end:])
    os.replace(path + ".tmp", path)
