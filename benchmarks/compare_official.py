"""jirl's DIRL, MadisNet or RainNet next to the official PyTorch code on this machine, in one run;
prints one JSON line.

  python benchmarks/compare_official.py --official_dirl ~/src/DIRL-Inharmonious-Region-Localization
  python benchmarks/compare_official.py --official_dirl PATH --config.dtype=bfloat16 --official_amp
  python benchmarks/compare_official.py --official_dirl PATH --batch 2 --size 64 --rounds 1
  python benchmarks/compare_official.py --official_dirl PATH --inference_only \
      --precisions float32,bfloat16 --batch 1        # predict's speed: four sides alternating
  python benchmarks/compare_official.py --config configs/madisnet.py --official_madisnet PATH
  python benchmarks/compare_official.py --config configs/rainnet.py --official_rainnet ~/src/RainNet \
      --batch 8 --size 256
  python benchmarks/compare_official.py --all --official_dirl D --official_madisnet M \
      --official_rainnet R [--update_docs docs/performance.md]   # every system, one table

PATH is your own clone of bcmi/DIRL-Inharmonious-Region-Localization (nothing of it is part of
jirl). Its side needs PyTorch, torchvision, scipy and opencv-python (`pip install -e '.[torch]'`
plus a torchvision that matches the torch build); its `model` package is imported from PATH, and
`torchvision.models.resnet34` is patched to build without weights, so that the official
`resnet34(pretrained=True)` downloads nothing: both sides start from random weights.

What runs (defaults: batch 8, 224 px, the official setting; `--batch` / `--size` change both sides):
  official  `InharmoniousEncoder` + `InharmoniousDecoder` built as dirl_train.py builds them
            (backbone resnet34, ggd_ch 32, mda_mode 'mask'); a train step is dirl_train.py's: forward
            in train mode, `multi_bce_loss_fusion` (bce + (1 - ssim) + iou, with the repo's
            pytorch_ssim / pytorch_iou) on the mask plus lambda_attention x the same over the five
            attention maps, backward, one torch Adam per network (lr 1e-4, weight_decay 1e-4);
            inference is eval mode under torch.no_grad(). `--official_amp` runs the forward under
            torch.autocast('cpu', bfloat16) (losses in float32).
  jirl      `--config FILE[:variant]` (default configs/dirl.py) with `--config.key=value` overrides
            as train.py takes them, e.g. `--config.dtype=bfloat16`; the jitted train step of the
            training loop (`dirl.objective`, `make_optimizer`), compiled ahead of time, and the
            jitted `model.apply(train=False)["mask"]`. The official side takes its ggd_ch, loss
            weights and Adam settings from the same config; the loss must be the official variant
            and the encoder the official ResNet34 layout.
Both sides get the same random batch (`common.random_batch`: N(0, 1) images and a rectangle mask;
NHWC for jirl, transposed to NCHW for PyTorch; the JSON carries each side's digest of it).

How: each framework runs in its own persistent child process (so that neither's idle thread pool
spins while the other runs, and each child's peak RSS is its own), started one after the other.
After a warm-up outside the timings (jirl: compile; both: the first step, which gives the
first-step loss at random weights, plus `--warmup` steps, and the same for inference), the parent
runs `--rounds` rounds of: `--steps` official train steps, `--steps` jirl train steps, then
`--infer_steps` forwards on each side; the side that goes first alternates between rounds, and
while one side is timed every other child is stopped (SIGSTOP, then SIGCONT): an idle side's
thread pool that spins or wakes would otherwise take cores from the timed one (with four sides
alive, two of them torch's, the official float32 DIRL inference at batch 8 measured 0.506 img/s
against 0.804 with two). Each request also waits `--settle_s`. Throughput is total
images over total timed seconds per side; ratios are jirl / official. The JSON also names the CPU
(model, cores, avx2 / avx512 / amx extensions), torch and jax versions, and thread settings.
Both children are alive at once: at 224 px, batch 8 they need about 7 + 11 GB.

MadisNet (`--config configs/madisnet.py --official_madisnet PATH`): see benchmarks/official_madisnet.py.

RainNet (`--config configs/rainnet.py --official_rainnet PATH`, PATH a clone of junleen/RainNet;
the official side needs only torch): see benchmarks/official_rainnet.py. The official side is
`RainNetModel` built with scripts/train.sh's options (gan_mode wgangp, normG RAIN, normD instance,
input_nc 3) and ngf / ndf / norm / dropout / Adam lr and beta1 / loss weights from the jirl config
(anything else it cannot represent is refused: the quick variants' depths, other Adam betas,
eps or weight decay, a size that is not a multiple of 256); a train step is its
`optimize_parameters()` unchanged (forward, D step with the gradient penalty, G step), with
`networks.cal_gradient_penalty` wrapped at run time to use the inputs' device instead of the
'cuda' that `backward_D` hard-codes; inference is `netG.processImage(image, mask)` in eval mode
under no_grad. jirl's side is its two-phase train step (D then G, one Adam each) and the jitted
`model.apply(image, train=False, mask=mask)["harmonized"]`. The batch also carries the real image
(`random_batch(real=True)`: a second N(0, 1) image; the composite both sides train on is
image * mask + real * (1 - mask), as the official dataset makes it); train img/s count each image
once per full D + G step; "first_loss" compares G's loss. `--official_amp` is refused for RainNet's
train step (`optimize_parameters` runs forward and backward in one call); its inference
(`--inference_only`) runs `processImage` under autocast.

`--all` runs every comparison the docs show, one subprocess each, then prints their table
(benchmarks/official_all.py).
"""

import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags
from common import (
    DEFAULT_CONFIG,
    JirlBench,
    config_argv,
    config_overrides,
    digest,
    is_harmonizer,
    model_config_mismatch,
    peak_rss_gb,
    random_batch,
    rss_gb,
    thread_env,
)
from ml_collections import config_flags
from official_madisnet import REQUIRED_FILES as MADISNET_FILES
from official_madisnet import OfficialMadisNet, config_problems, official_message, without_download
from official_rainnet import REQUIRED_FILES as RAINNET_FILES
from official_rainnet import OfficialRainNet
from official_rainnet import config_problems as rainnet_config_problems
from official_rainnet import official_message as rainnet_official_message
from official_rainnet import size_problem as rainnet_size_problem

from jirl.runtime import flags as jflags

jflags.define_config_flag(default=DEFAULT_CONFIG, required=False, help_text=(
    "jirl's config (a DIRL, MadisNet or RainNet one): a name such as dirl:quick or a file; "
    "override with --config.key=value."))
flags.DEFINE_string("official_dirl", None,
                    "Path of your clone of bcmi/DIRL-Inharmonious-Region-Localization (DIRL configs).")
flags.DEFINE_string("official_madisnet", None, "Path of your clone of "
                    "bcmi/MadisNet-Inharmonious-Region-Localization (configs/madisnet.py).")
flags.DEFINE_string("official_rainnet", None, "Path of your clone of junleen/RainNet "
                    "(configs/rainnet.py).")
flags.DEFINE_bool("one_at_a_time", False, "Run the two sides one after the other (each warm-up and "
                  "all its rounds, then the other) instead of alternating: only one child is alive "
                  "at a time, for machines without the memory for both.")
flags.DEFINE_integer("batch", None, "Batch size of both sides (default: the config's; DIRL 8, RainNet 11).")
flags.DEFINE_integer("size", None, "Square input size of both sides (default: the config's crop_size; "
                     "DIRL 224, RainNet 256).")
flags.DEFINE_integer("rounds", 3, "Alternation rounds.")
flags.DEFINE_integer("steps", 3, "Timed train steps per side and round.")
flags.DEFINE_integer("infer_steps", 5, "Timed inference batches per side and round.")
flags.DEFINE_integer("warmup", 1, "Untimed steps (train and inference) per side after the first one.")
flags.DEFINE_bool("official_amp", False, "Official side: forward under torch.autocast('cpu', bfloat16).")
flags.DEFINE_bool("inference_only", False, "Time only the inference forward (no train steps): what "
                  "predict.py runs.")
flags.DEFINE_list("precisions", [], "Run a pair of sides per precision, all alternating in one run: "
                  "float32 (jirl config.dtype=float32, official float32) and/or bfloat16 (jirl "
                  "config.dtype=bfloat16, official forward under torch.autocast('cpu', bfloat16)). "
                  "Default: one pair, as --config.dtype and --official_amp say.")
flags.DEFINE_enum("official_loss", "auto", ["auto", "dirl_train", "composed"],
                  "Official loss: dirl_train = import multi_bce_loss_fusion from the repo's dirl_train.py "
                  "(needs its training dependencies: tensorboardX, albumentations, ...); composed = the "
                  "same sum from the repo's pytorch_ssim / pytorch_iou and torch's BCELoss; auto = "
                  "dirl_train if it imports, else composed.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads on the official side (0 = torch's default).")
flags.DEFINE_float("settle_s", 0.5, "Pause before each timed request (lets the idle side's threads sleep).")
flags.DEFINE_integer("seed", 0, "Seed of the random batch (model seeds: config.seed).")
flags.DEFINE_bool("all", False, "Every system whose official clone is given (--official_dirl, "
                  "--official_madisnet, --official_rainnet): train and inference at --batch (default "
                  "8), inference at batch 1, float32 and (with bf16 units) bfloat16 against autocast, "
                  "then one table (benchmarks/official_all.py).")
flags.DEFINE_string("update_docs", None, "With --all: replace the marked table block of this Markdown "
                    "file (e.g. docs/performance.md) with the table.")
flags.DEFINE_enum("child", "", ["", "official", "jirl"], "Internal: serve one side over stdin/stdout.")
FLAGS = flags.FLAGS

# config.model keys that may differ from configs/dirl.py: ggd_ch (the official side builds the same
# width) and backbone_weights (unused: both sides start from random weights). The others are fixed.
FREE_MODEL_KEYS = ("ggd_ch", "backbone_weights")


# ----------------------------------------------------------------------------------------------
# Child processes: one side each, serving JSON requests line by line.
# ----------------------------------------------------------------------------------------------


def serve(side_cls) -> int:
    """Answers the parent's requests ({"cmd": ...} lines on stdin) with JSON lines.

    The protocol keeps the original stdout; everything else printed (the official model prints
    while it builds) goes to stderr, which the parent keeps for error reports.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    side = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                out.write("{}\n")
                return 0
            if msg["cmd"] == "setup":
                side = side_cls(msg)
                reply = dict(side.info)
            elif msg["cmd"] == "stats":
                reply = {}
            else:
                reply = getattr(side, msg["cmd"])(msg["n"])
            reply.update(peak_rss_gb=peak_rss_gb(), rss_gb=rss_gb())
        except Exception:  # reported to the parent, which stops the run
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        if "error" in reply:
            return 1
    return 0


def _official_loss(repo: str, choice: str):
    """(fusion(preds, target) -> total, description): dirl_train's multi_bce_loss_fusion['total']."""
    import torch

    error = None
    if choice in ("auto", "dirl_train"):
        try:
            from dirl_train import multi_bce_loss_fusion
        except Exception as e:  # its training dependencies (tensorboardX, albumentations, ...)
            if choice == "dirl_train":
                raise RuntimeError(f"cannot import dirl_train from {repo}: {e!r}") from e
            error = f"{type(e).__name__}: {e}"
        else:
            return (lambda preds, target: multi_bce_loss_fusion(preds, target)["total"],
                    "dirl_train.multi_bce_loss_fusion")
    import pytorch_iou
    import pytorch_ssim

    bce = torch.nn.BCELoss()
    ssim = pytorch_ssim.SSIM(window_size=11, size_average=True)
    iou = pytorch_iou.IOU(size_average=True)

    def fusion(preds, target):
        return sum(bce(p, target) + (1 - ssim(p, target)) + iou(p, target) for p in preds)

    description = "BCELoss + (1 - pytorch_ssim.SSIM) + pytorch_iou.IOU, summed over the maps"
    return fusion, description + (f" (dirl_train not importable: {error})" if error else "")


def _official_info(torch, inputs, params: int, loss: str, optimizer: str, amp: bool) -> dict:
    """The official side's description: what it runs, on which inputs (image, mask and, for a
    harmonizer, real), with which threads."""
    try:
        import torchvision
    except ImportError:  # RainNet's side does not need it
        torchvision = None

    return {
        "params": params, "loss": loss, "optimizer": optimizer,
        "precision": "bfloat16 autocast (losses float32)" if amp else "float32",
        # of the NCHW tensors the model gets, transposed back to NHWC
        "input_digest": digest(*(t.permute(0, 2, 3, 1).numpy() for t in inputs)),
        "versions": {"torch": torch.__version__,
                     "torchvision": getattr(torchvision, "__version__", None)},
        "threads": {"torch_num_threads": torch.get_num_threads(),
                    "torch_num_interop_threads": torch.get_num_interop_threads(),
                    "cpu_capability": _torch_cpu_capability(torch),
                    "parallel_backend": _torch_parallel_backend(torch), "env": thread_env()},
    }


class OfficialSide:
    """The official model on one batch: DIRL (its encoder / decoder, two Adams, dirl_train.py's
    loss), MadisNet (`official_madisnet.OfficialMadisNet`) or RainNet
    (`official_rainnet.OfficialRainNet`)."""

    def __init__(self, msg: dict):
        import torch

        if FLAGS.torch_threads:
            torch.set_num_threads(FLAGS.torch_threads)
        self.torch = torch
        self.amp = msg["amp"]
        batch = random_batch(msg["batch"], msg["size"], msg["seed_batch"], real=msg["model"] == "rainnet")
        nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        self.image, self.mask = nchw(batch["image"]), nchw(batch["mask"])
        # MadisNet's or RainNet's side in its own class (None: DIRL's, built here)
        self.other = None
        if msg["model"] == "madisnet":
            self.other = OfficialMadisNet(os.path.abspath(FLAGS.official_madisnet), msg,
                                             self.image, self.mask)
            inputs = (self.image, self.mask)
        elif msg["model"] == "rainnet":
            real = nchw(batch["real"])
            self.other = OfficialRainNet(os.path.abspath(FLAGS.official_rainnet), msg,
                                            self.image, self.mask, real)
            inputs = (self.image, self.mask, real)
        if self.other is not None:
            m = self.other
            self.info = _official_info(torch, inputs, m.params, m.loss_text, m.optimizer_text, self.amp)
            return
        self._build_dirl(msg)

    def _build_dirl(self, msg: dict) -> None:
        import argparse

        import torchvision.models

        torch = self.torch
        repo = os.path.abspath(FLAGS.official_dirl)
        without_download(torchvision.models, "resnet34")
        sys.path.insert(0, repo)
        try:
            from model import InharmoniousDecoder, InharmoniousEncoder
        except ImportError as e:
            raise RuntimeError(f"importing the official model from {repo} failed ({e!r}); its "
                               "model/DIRL.py also needs scipy and opencv-python") from e
        torch.manual_seed(msg["seed"])
        # dirl_train.py's options for this setup (ArgsParser defaults, mda_mode as its train.sh sets)
        opt = argparse.Namespace(backbone="resnet34", ggd_ch=msg["ggd_ch"], mda_mode="mask", input_nc=3)
        self.encoder = InharmoniousEncoder(opt, opt.input_nc)
        self.decoder = InharmoniousDecoder(opt, opt.input_nc)
        self.fusion, loss_source = _official_loss(repo, FLAGS.official_loss)
        adam = dict(lr=msg["lr"], betas=(msg["b1"], msg["b2"]), eps=msg["eps"],
                    weight_decay=msg["weight_decay"])
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), **adam)
        self.decoder_opt = torch.optim.Adam(self.decoder.parameters(), **adam)
        self.lambda_detection, self.lambda_attention = msg["lambda_detection"], msg["lambda_attention"]
        params = sum(p.numel() for m in (self.encoder, self.decoder) for p in m.parameters())
        self.info = _official_info(torch, (self.image, self.mask), int(params), loss_source,
                                   f"2 x torch.optim.Adam({adam})", self.amp)

    def _autocast(self):
        if self.amp:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def train(self, n: int) -> dict:
        """n train steps of dirl_train.py (mda_mode 'mask'), MadisNet's train.py or RainNet's
        optimize_parameters: seconds and the last step's losses."""
        if self.other is not None:
            return self.other.train(n, self._autocast)
        self.encoder.train()
        self.decoder.train()
        t0 = time.perf_counter()
        for _ in range(n):
            with self._autocast():
                preds = self.decoder(self.encoder(self.image))["mask"]
            preds = [p.float() for p in preds]
            self.encoder_opt.zero_grad()
            self.decoder_opt.zero_grad()
            detection = self.fusion(preds[:1], self.mask)
            attention = self.fusion(preds[1:], self.mask)
            total = detection * self.lambda_detection + attention * self.lambda_attention
            total.backward()
            self.encoder_opt.step()
            self.decoder_opt.step()
            losses = {"loss": total.item(), "detection": detection.item(), "attention": attention.item()}
        return {"seconds": time.perf_counter() - t0, "losses": losses}

    def infer(self, n: int) -> dict:
        """n forwards in eval mode under no_grad (dirl_test.py / MadisNet's test.py / RainNet's
        processImage): seconds."""
        if self.other is not None:
            return self.other.infer(n, self._autocast)
        self.encoder.eval()
        self.decoder.eval()
        t0 = time.perf_counter()
        with self.torch.no_grad(), self._autocast():
            for _ in range(n):
                self.decoder(self.encoder(self.image))["mask"][0]
        return {"seconds": time.perf_counter() - t0}


def _torch_cpu_capability(torch):
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return None


def _torch_parallel_backend(torch):
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend"):
            return line.partition(":")[2].strip()
    return None


# the losses a train reply carries (the ones a model logs): DIRL / MadisNet, then RainNet's
LOGGED_LOSSES = ("loss", "detection", "attention", "ddm", "di", "loss_D", "loss_G", "D_fake", "D_real",
                 "D_gp", "D_global", "D_local", "G_global", "G_local", "G_GAN", "G_L1")


class JirlSide:
    """jirl's train step and inference forward (see `common.JirlBench`) on one batch."""

    def __init__(self, msg: dict):
        import flax
        import jax
        import jaxlib

        config = FLAGS.config
        config.batch_size, config.data.crop_size = msg["batch"], msg["size"]
        batch = random_batch(msg["batch"], msg["size"], msg["seed_batch"], real=is_harmonizer(config))
        self.bench = JirlBench(config, batch)
        self.info = {
            "params": self.bench.num_params, "precision": config.dtype,
            "loss": f"jirl.models.{config.model.name}.{self.bench.loss_name} (config.loss: "
                    f"{config.loss.to_dict()})",
            "optimizer": f"jirl.training.optim.make_optimizer({config.optimizer.to_dict()})",
            "input_digest": self.bench.input_digest(),
            "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__},
            "threads": {"backend": jax.default_backend(), "devices": jax.device_count(),
                        "env": thread_env()},  # XLA_FLAGS as jirl sets it on import
        }

    def compile_train(self, n: int) -> dict:
        return {"seconds": self.bench.compile_train()}

    def compile_infer(self, n: int) -> dict:
        return {"seconds": self.bench.compile_infer()}

    def train(self, n: int) -> dict:
        seconds, logs = self.bench.train(n)
        return {"seconds": seconds, "losses": {k: logs[k] for k in LOGGED_LOSSES if k in logs}}

    def infer(self, n: int) -> dict:
        return {"seconds": self.bench.infer(n)}


# ----------------------------------------------------------------------------------------------
# The parent: starts both children, warms them up, alternates timed requests.
# ----------------------------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


class Child:
    """A persistent child process serving one side (`role`: "official" or "jirl")."""

    def __init__(self, name: str, role: str, args: list[str]):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--child={role}", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1)

    def request(self, cmd: str, n: int = 0, **kwargs) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, "n": n, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below with the child's stderr
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line.strip() else {"error": "the child exited"}
        if "error" in reply:
            self.proc.wait(timeout=60)
            self.stderr.seek(0)
            tail = "\n".join(self.stderr.read().strip().splitlines()[-15:])
            raise ChildError(f"{self.name} side failed on {cmd!r} (rc {self.proc.returncode}):\n"
                             f"{reply['error']}\n--- stderr tail ---\n{tail}")
        return reply

    @contextlib.contextmanager
    def paused(self):
        """The child stopped (SIGSTOP) for the duration: no thread of it can spin or wake while
        another side is timed."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ChildError, OSError, ValueError):
                self.request("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# model name -> (flag of the official clone, its repository, files a clone has)
OFFICIAL_REPOS = {
    "dirl": ("official_dirl", "bcmi/DIRL-Inharmonious-Region-Localization",
             ("model/__init__.py", "model/DIRL.py", "pytorch_ssim/__init__.py", "pytorch_iou/__init__.py")),
    "madisnet": ("official_madisnet", "bcmi/MadisNet-Inharmonious-Region-Localization", MADISNET_FILES),
    "rainnet": ("official_rainnet", "junleen/RainNet", RAINNET_FILES),
}
# official sides that build torchvision models (RainNet's needs torch only)
NEEDS_TORCHVISION = ("dirl", "madisnet")


def check_prerequisites(model: str) -> None:
    """Exits with a clear message when the official repo, torch or torchvision is missing."""
    flag, name, files = OFFICIAL_REPOS[model]
    repo = FLAGS[flag].value
    if not repo:
        sys.exit(f"compare_official: --{flag} PATH is required for a {model} config (your clone of "
                 f"https://github.com/{name}).")
    missing = [p for p in files if not os.path.isfile(os.path.join(repo, p))]
    if missing:
        sys.exit(f"compare_official: {repo!r} is not a clone of {name} (missing: {', '.join(missing)}).")
    for module, hint in (("torch", "pip install -e '.[torch]'"),
                         ("torchvision", "pip install the torchvision release that matches your torch")):
        if module == "torchvision" and model not in NEEDS_TORCHVISION:
            continue
        if importlib.util.find_spec(module) is None:
            sys.exit(f"compare_official: the official side needs {module} ({hint}).")


def check_config(config) -> None:
    """The jirl config must describe what the official side runs: DIRL (official loss, ResNet34),
    MadisNet (official G, iHDRNet, E_dom and loss) or RainNet (official G and D layouts, Adams
    and gradient penalty; `official_rainnet.config_problems`), at a size the official code runs."""
    from jirl.configs import dirl as dirl_config

    if config.model.name not in OFFICIAL_REPOS:
        raise app.UsageError(f"--config is a {config.model.name!r} config; the official code compared "
                             f"is {', '.join(OFFICIAL_REPOS)}")
    if config.model.name == "rainnet":
        problems = rainnet_config_problems(config, model_config_mismatch)
        if problems:
            raise app.UsageError("the official RainNet cannot run this config: " + "; ".join(problems)
                                 + " (it follows only model.ngf, ndf, norm, dropout, the Adams' "
                                 "learning rates and beta1, and loss.gp_ratio, lambda_a, lambda_v, "
                                 "lambda_l1)")
        problem = rainnet_size_problem(FLAGS.size or int(config.data.crop_size))
        if problem:
            raise app.UsageError(problem)
        if (FLAGS.official_amp or "bfloat16" in FLAGS.precisions) and not FLAGS.inference_only:
            raise app.UsageError("--official_amp / --precisions=bfloat16 with train steps: the "
                                 "official RainNet step (optimize_parameters) runs forward and "
                                 "backward in one call, with no autocast forward to compare with; "
                                 "add --inference_only")
        return
    if config.model.name == "madisnet":
        problems = config_problems(config, model_config_mismatch)
        if problems:
            raise app.UsageError(f"{problems} differ from the official MadisNet (the official side "
                                 "can follow only the localizer, its ggd_ch and domain_encoder)")
        return
    differ = [k for k in model_config_mismatch(config.model, dirl_config.model_config())
              if k not in FREE_MODEL_KEYS]
    if differ:
        raise app.UsageError(f"config.model keys {differ} differ from the official ResNet34 DIRL "
                             "(the official side can follow only ggd_ch)")
    if config.loss.variant != "official":
        raise app.UsageError(f"config.loss.variant={config.loss.variant!r}: the official code trains "
                             "with the 'official' loss")


def _rate(batch: int, replies: list[dict]) -> float | None:
    """Images per second over all timed requests."""
    if not replies:
        return None
    return batch * sum(r["n"] for r in replies) / sum(r["seconds"] for r in replies)


def _official_message(config, common_msg: dict) -> dict:
    """The official side's setup: the batch, the model, the Adam settings and the loss weights."""
    opt = config.optimizer
    msg = dict(common_msg, model=config.model.name, lr=float(opt.learning_rate), b1=float(opt.b1),
               b2=float(opt.b2), eps=float(opt.eps), weight_decay=float(opt.weight_decay),
               amp=FLAGS.official_amp)
    if config.model.name == "madisnet":
        return dict(msg, **official_message(config))
    if config.model.name == "rainnet":
        return dict(msg, **rainnet_official_message(config))
    return dict(msg, ggd_ch=int(config.model.ggd_ch),
                lambda_detection=float(config.loss.lambda_detection),
                lambda_attention=float(config.loss.lambda_attention))


def _warm_up(role: str, side: Child) -> dict:
    """Compile (jirl), the first train step (its losses at random weights), `--warmup` more steps,
    and the same for inference (only inference with --inference_only); outside the timings."""
    w = {}
    if not FLAGS.inference_only:
        if role == "jirl":
            w["compile_train_seconds"] = side.request("compile_train")["seconds"]
        first = side.request("train", 1)
        w["first_train_step_seconds"], w["first_losses"] = first["seconds"], first["losses"]
        if FLAGS.warmup:
            w["last_warmup_losses"] = side.request("train", FLAGS.warmup)["losses"]
    if role == "jirl":
        w["compile_inference_seconds"] = side.request("compile_infer")["seconds"]
    w["first_inference_seconds"] = side.request("infer", 1)["seconds"]
    if FLAGS.warmup:
        side.request("infer", FLAGS.warmup)
    w["peak_rss_gb_after_warmup"] = side.request("stats")["peak_rss_gb"]
    return w


def run_comparison(config) -> dict:
    batch = FLAGS.batch or int(config.batch_size)
    size = FLAGS.size or int(config.data.crop_size)
    common_msg = {"batch": batch, "size": size, "seed": int(config.seed), "seed_batch": FLAGS.seed}
    flag = OFFICIAL_REPOS[config.model.name][0]
    official_args = ["--" + flag + "=" + FLAGS[flag].value, f"--official_loss={FLAGS.official_loss}",
                     f"--torch_threads={FLAGS.torch_threads}"]
    starts = {}  # side name -> (role, child argv, setup message)
    for precision in side_precisions():
        suffix = f"/{precision}" if precision else ""
        amp = FLAGS.official_amp if precision is None else precision == "bfloat16"
        dtype = [f"--config.dtype={precision}"] if precision else []
        starts["official" + suffix] = ("official", official_args,
                                       dict(_official_message(config, common_msg), amp=amp))
        starts["jirl" + suffix] = ("jirl", config_argv(FLAGS["config"]) + dtype, common_msg)
    sides, setup, warm, final = {}, {}, {}, {}
    timed = {name: {"train": [], "infer": []} for name in starts}
    phases = (("infer", FLAGS.infer_steps),) if FLAGS.inference_only else (
        ("train", FLAGS.steps), ("infer", FLAGS.infer_steps))

    def start(name: str) -> None:
        role, args, msg = starts[name]
        sides[name] = Child(name, role, args)
        setup[name] = sides[name].request("setup", **msg)

    def timed_round(names: list[str]) -> None:
        for phase, n in phases:
            for name in names:
                with contextlib.ExitStack() as others:  # every other side stopped meanwhile
                    for other, side in sides.items():
                        if other != name:
                            others.enter_context(side.paused())
                    time.sleep(FLAGS.settle_s)
                    reply = sides[name].request(phase, n)
                timed[name][phase].append({"n": n, "seconds": reply["seconds"]})

    try:
        if FLAGS.one_at_a_time:  # each side whole, then the other: one child alive at a time
            for name in starts:
                start(name)
                warm[name] = _warm_up(starts[name][0], sides[name])
                for _ in range(FLAGS.rounds):
                    timed_round([name])
                final[name] = sides[name].request("stats")
                sides.pop(name).close()
        else:
            for name in starts:  # one after the other, so that neither's start-up competes
                start(name)
            for name, side in sides.items():
                warm[name] = _warm_up(starts[name][0], side)
            order = list(starts)
            for r in range(FLAGS.rounds):  # the side that goes first rotates (two sides: alternates)
                timed_round(order[r % len(order):] + order[:r % len(order)])
            final = {name: side.request("stats") for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.close()

    result = {"benchmark": "compare_official", "model": config.model.name, "batch": batch, "size": size,
              "sides": list(starts), "inference_only": FLAGS.inference_only,
              "one_at_a_time": FLAGS.one_at_a_time, "rounds": FLAGS.rounds,
              "train_steps_per_round": FLAGS.steps, "inference_batches_per_round": FLAGS.infer_steps,
              "warmup_steps": FLAGS.warmup, "settle_seconds": FLAGS.settle_s}
    for name in starts:
        result[name] = {
            "train_images_per_sec": _rate(batch, timed[name]["train"]),
            "inference_images_per_sec": _rate(batch, timed[name]["infer"]),
            "peak_rss_gb": final[name]["peak_rss_gb"],
            "train_images_per_sec_by_round": [_rate(batch, [t]) for t in timed[name]["train"]],
            "inference_images_per_sec_by_round": [_rate(batch, [t]) for t in timed[name]["infer"]],
            **{k: v for k, v in setup[name].items() if k not in ("peak_rss_gb", "rss_gb")},
            **warm[name],
        }
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.child == "official":
        return serve(OfficialSide)
    if FLAGS.child == "jirl":
        return serve(JirlSide)
    if FLAGS.all:
        return _run_all()
    config = FLAGS.config
    check_config(config)
    check_prerequisites(config.model.name)
    try:
        result = run_comparison(config)
    except ChildError as e:
        sys.exit(f"compare_official: {e}")
    for precision in side_precisions():
        suffix = f"/{precision}" if precision else ""
        off, jirl = result["official" + suffix], result["jirl" + suffix]
        ratio = lambda k: jirl[k] / off[k] if off[k] and jirl[k] else None  # noqa: B023
        result["ratio_jirl_over_official" + suffix] = {k: ratio(k) for k in (
            "train_images_per_sec", "inference_images_per_sec", "peak_rss_gb")}
        if not FLAGS.inference_only:
            first = {"official": off["first_losses"]["loss"], "jirl": jirl["first_losses"]["loss"]}
            result["first_loss" + suffix] = {**first, "ratio_jirl_over_official":
                                             first["jirl"] / first["official"]}
    sides = [result[name] for name in result["sides"]]
    result["same_inputs"] = len({side["input_digest"] for side in sides}) == 1
    result["config"] = config_flags.get_config_filename(FLAGS["config"])
    result["config_overrides"] = config_overrides(FLAGS["config"])
    result["official_amp"] = FLAGS.official_amp
    from jirl.cpu import cpu_info  # here: importing jirl sets XLA_FLAGS, which the sides report

    result["cpu"] = cpu_info()
    result["versions"] = {"python": platform.python_version()}
    for side in sides:
        result["versions"].update(side.pop("versions"))
    result["threads"] = {name: result[name].pop("threads") for name in result["sides"]}
    print(json.dumps(result))
    return 0


def _run_all() -> int:
    """--all: each system's comparisons in turn (official_all.run_all)."""
    from official_all import run_all

    if FLAGS["config"].present or FLAGS.precisions or FLAGS.inference_only or FLAGS.official_amp:
        raise app.UsageError("--all chooses the configs, precisions and work itself; drop --config, "
                             "--precisions, --inference_only and --official_amp")
    paths = {f: FLAGS[f].value for f in ("official_dirl", "official_madisnet", "official_rainnet")}
    passthrough = [f"--{name}={FLAGS[name].value}" for name in (
        "rounds", "steps", "infer_steps", "warmup", "torch_threads", "settle_s", "seed")]
    passthrough += ["--one_at_a_time"] if FLAGS.one_at_a_time else []
    command = " ".join(["python benchmarks/compare_official.py --all"] + [
        f"--{flag} {flag.removeprefix('official_').upper()}" for flag, path in paths.items() if path]
        + [a for a in passthrough if FLAGS[a[2:].split("=")[0]].present]
        + ([f"--update_docs {FLAGS.update_docs}"] if FLAGS.update_docs else []))
    return run_all(os.path.abspath(__file__), paths, FLAGS.batch or 8, passthrough, command,
                   FLAGS.update_docs)


def side_precisions() -> list[str | None]:
    """--precisions, each checked; [None] (one pair, as configured) when it is empty."""
    bad = [p for p in FLAGS.precisions if p not in ("float32", "bfloat16")]
    if bad:
        raise app.UsageError(f"--precisions: {bad}; use float32 and/or bfloat16")
    return list(FLAGS.precisions) or [None]


if __name__ == "__main__":
    app.run(main)
