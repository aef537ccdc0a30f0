"""Inference on photos at their own resolution, from any jirl or converted checkpoint.

`Localizer` answers "where is the inharmonious region?" with a probability map the size of the
photo; `Harmonizer` re-renders a region (found by a localizer, or drawn by a user) and leaves the
rest of the photo byte-identical. Both read the model and its whole config from the checkpoint's
meta, run on every local device, and compile once per input shape (`compilations`).

The localizer's resolution policies (`resize`):

* ``"train"`` (default): the photo resized to the size the model was trained at
  (`config.data.crop_size`) exactly as eval.py resizes, and the map resized back to the photo
  bilinearly. This is the official evaluation's path and libcom's `InharmoniousLocalizationModel`.
* ``"native"``: the photo at its own resolution, reflect-padded up to a bucket size (`bucket_side`:
  multiples of 32, then a geometric ladder, so that a folder of mixed sizes compiles a bounded
  number of programs), and the map cropped back. For models that tolerate a change of scale.
* ``"long_side"``: resized so that its longer side is `long_side` pixels, then as ``"native"``,
  and the map resized back to the photo.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jirl import cpu as jcpu
from jirl.convert import official
from jirl.data import images as jimages
from jirl.data import transforms
from jirl.metrics import norm_pred
from jirl.models import DTYPES as COMPUTE_DTYPES
from jirl.models import build_model, init_model_variables
from jirl.normalization import denormalize
from jirl.runtime import checkpoints as ckpt
from jirl.runtime import mesh as jmesh
from jirl.tasks import HARMONIZATION, LOCALIZATION

POLICIES = ("train", "native", "long_side")
DEFAULT_LONG_SIDE = 512  # "long_side" without a size
SIZE_MULTIPLE = 32  # every localizer's encoder downsamples by 32 (ResNet34 stages, UNet downs)
THRESHOLD = 0.5  # the official protocol's threshold, after per-image normalization


def bucket_side(n: int, multiple: int = SIZE_MULTIPLE, exact_steps: int = 8,
                growth: float = 1.25) -> int:
    """The smallest ladder size >= `n`: multiples of `multiple` up to `exact_steps` of them, then
    each size at least `growth` times the previous one (rounded up to `multiple`). A side of 4,000
    pixels has 20 sizes below it, so padding costs at most ~25 % per side."""
    if n < 1:
        raise ValueError(f"a side must be >= 1 pixel, got {n}")
    size = multiple
    while size < n:
        size = size + multiple if size < exact_steps * multiple else \
            int(math.ceil(size * growth / multiple) * multiple)
    return size


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one photo of `photo` (height, width) is run: resized to `run`, padded to `padded`."""

    photo: tuple[int, int]
    run: tuple[int, int]
    padded: tuple[int, int]


@dataclasses.dataclass
class LoadedModel:
    """A restored checkpoint: its config, the ModelSpec, the flax module and its variables."""

    config: ml_collections.ConfigDict
    spec: Any
    model: Any
    variables: dict
    checkpoint: str  # the step directory
    meta: dict


DTYPES = ("auto", *COMPUTE_DTYPES)  # auto: `inference_dtype`


def inference_dtype(dtype: str | None, trained: str) -> str:
    """The compute dtype to run a model trained in `trained` at: `dtype` itself, the trained one
    for None, and for "auto" bfloat16 on a CPU with bf16 units (AVX512-BF16 / AMX), else the
    trained one: there bf16 products are what the CPU computes fastest, at a negligible change of
    the scores (the README gives both, measured)."""
    if dtype not in (None, *DTYPES):
        raise ValueError(f"dtype={dtype!r}; use one of {DTYPES} (or None: as trained)")
    if dtype == "auto":
        on_bf16_cpu = jax.default_backend() == "cpu" and jcpu.has_bf16_units()
        return "bfloat16" if on_bf16_cpu else trained
    return dtype or trained


def load_checkpoint(path: str, *, config: ml_collections.ConfigDict | None = None,
                    dtype: str | None = None) -> LoadedModel:
    """Restores the checkpoint at `path` on every local device: a step directory, a checkpoint
    directory, a `jirl train` workdir (its best checkpoint is preferred), or the released PyTorch
    files of a system (one `.pth`, several comma-separated, or their folder: converted once into
    a cache, `jirl.convert.official.official_weights`).

    The model and its config come from the checkpoint's meta, which `jirl train` and
    `jirl convert` write; `config` replaces it for a checkpoint without one, and for released
    files is the config they are converted with (default: the system's official one). `dtype`
    overrides the compute dtype it was trained with (`inference_dtype`).
    """
    converted = official.official_weights(path, config)
    if converted is not None:  # released .pth files: converted (once) with `config`, stored in it
        path, config = converted, None
    if config is None:
        config = ckpt.stored_config(path)
    config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy
    config.dtype = inference_dtype(dtype, config.get("dtype", "float32"))
    spec, model = build_model(config)
    target = jax.eval_shape(lambda: init_model_variables(config, model))
    mesh = jmesh.make_mesh(jax.local_devices())
    variables, step_dir = ckpt.restore(path, target, mesh=mesh, model_cfg=config.model)
    return LoadedModel(config, spec, model, variables, step_dir, ckpt.read_meta(step_dir))


class _Runner:
    """A model call sharded over the local devices' batch axis, compiled once per input shape."""

    def __init__(self, loaded: LoadedModel, fn: Callable):
        self.variables = loaded.variables
        self.mesh = jmesh.make_mesh(jax.local_devices())
        self._fn = jax.jit(fn)
        self._compiled: dict[tuple, Any] = {}
        self.compile_seconds = 0.0

    @property
    def compilations(self) -> int:
        """How many programs have been compiled (one per distinct batch shape)."""
        return len(self._compiled)

    def __call__(self, *arrays: np.ndarray) -> dict:
        n = arrays[0].shape[0]
        devices = self.mesh.devices.size
        rows = -(-n // devices) * devices
        arrays = tuple(np.pad(a, [(0, rows - n)] + [(0, 0)] * (a.ndim - 1)) for a in arrays)
        key = tuple((a.shape, a.dtype.str) for a in arrays)
        sharding = NamedSharding(self.mesh, PartitionSpec(jmesh.DATA_AXIS))
        placed = tuple(jax.device_put(a, sharding) for a in arrays)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._fn.lower(self.variables, *placed).compile()
            self.compile_seconds += time.perf_counter() - start
        outputs = jax.device_get(self._compiled[key](self.variables, *placed))
        return {k: np.asarray(v)[:n] for k, v in outputs.items()}


def _resize_map(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float [h, w, C] map resized bilinearly (OpenCV INTER_LINEAR) to [height, width, C]."""
    return transforms.resize_bilinear(np.asarray(x, np.float32), height, width)


def _pad_reflect(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, C] padded at the bottom and right to [height, width, C] by reflection (a side of one
    pixel, which has nothing to reflect, by repetition)."""
    h, w = x.shape[:2]
    pads = [(0, height - h), (0, width - w), (0, 0)]
    return np.pad(x, pads, mode="reflect" if min(h, w) > 1 else "edge")


def _check_policy(resize: str, long_side: int | None) -> None:
    if resize not in POLICIES:
        raise ValueError(f"resize={resize!r}; use one of {POLICIES}")
    if (resize == "long_side") != (long_side is not None):
        raise ValueError("long_side=N goes with resize='long_side' (and only with it)")
    if long_side is not None and long_side < SIZE_MULTIPLE:
        raise ValueError(f"long_side must be >= {SIZE_MULTIPLE}, got {long_side}")


class Localizer:
    """A localizer checkpoint as a function: photo -> float32 probability mask [H, W] in [0, 1]
    of the inharmonious region, at the photo's own size (see the module doc for `resize`).

        loc = jirl.Localizer.from_checkpoint("runs/dirl_quick")   # or released .pth files
        mask = loc("photo.jpg")              # also a PIL image or an [H, W, 3] array
        masks = loc([a, b, c])               # same-size photos, one batch: [3, H, W]
        region = jirl.binary_mask(mask)      # the official protocol's bool [H, W]

    Arrays are height x width x channels in RGB order (not CHW, not BGR): uint8 [0, 255], uint16,
    or floats in [0, 1] (`jirl.data.images.as_rgb`). libcom users: libcom's
    `InharmoniousLocalizationModel` reads BGR files with OpenCV and returns a 256 x 256 uint8 mask;
    given the same photo as a path (or `cv2.imread(p)[..., ::-1]`), this returns float
    probabilities at the photo's size, which `resize="train"` computes at 256 x 256 as libcom does.
    """

    def __init__(self, loaded: LoadedModel, *, resize: str = "train", long_side: int | None = None):
        spec, config = loaded.spec, loaded.config
        if spec.task is not LOCALIZATION:
            raise ValueError(f"{config.model.name} is a {spec.task.name} model, not a localizer: use "
                             "jirl.Harmonizer (jirl predict --harmonizer)")
        _check_policy(resize, long_side)
        self.loaded, self.resize, self.long_side = loaded, resize, long_side
        self.augment = transforms.AugmentConfig.from_data_config(config.data)
        self._runner = _Runner(loaded, self._forward)

    @classmethod
    def from_checkpoint(cls, path: str, *, resize: str = "train", long_side: int | None = None,
                        config: ml_collections.ConfigDict | None = None,
                        dtype: str | None = "auto") -> Localizer:
        """The localizer of a checkpoint (`load_checkpoint`: model and config from its meta),
        by default in bf16 on a CPU with bf16 units (`inference_dtype`)."""
        return cls(load_checkpoint(path, config=config, dtype=dtype), resize=resize,
                   long_side=long_side)

    def with_policy(self, resize: str, long_side: int | None = None) -> Localizer:
        """This localizer under another resolution policy, sharing its model and its compiled
        programs (a shape compiled under one policy is not compiled again under another)."""
        _check_policy(resize, long_side)
        other = copy.copy(self)
        other.resize, other.long_side = resize, long_side
        return other

    @property
    def name(self) -> str:
        return self.loaded.config.model.name

    @property
    def dtype(self) -> str:
        """The compute dtype the model runs at."""
        return self.loaded.config.dtype

    @property
    def train_size(self) -> int:
        """The side of the square images the model was trained at."""
        return int(self.loaded.config.data.crop_size)

    @property
    def compilations(self) -> int:
        return self._runner.compilations

    @property
    def compile_seconds(self) -> float:
        return self._runner.compile_seconds

    def _forward(self, variables: dict, x: jax.Array) -> dict:
        spec = self.loaded.spec
        outputs = self.loaded.model.apply(variables, x, train=False)
        mask = spec.eval_masks(outputs)[spec.primary_mask]
        result = {"mask": mask[..., 0].astype(jnp.float32)}
        extra = spec.eval_images(outputs) if spec.eval_images is not None else {}
        data = self.loaded.config.data
        result.update({k: denormalize(v, data.mean, data.std) for k, v in extra.items()})
        return result

    def plan(self, height: int, width: int) -> Plan:
        """The sizes a photo of height x width is run at under this localizer's policy."""
        if self.resize == "train":
            side = self.train_size
            return Plan((height, width), (side, side), (side, side))
        if self.resize == "long_side":
            scale = self.long_side / max(height, width)
            run = (max(1, round(height * scale)), max(1, round(width * scale)))
        else:
            run = (height, width)
        return Plan((height, width), run, (bucket_side(run[0]), bucket_side(run[1])))

    def prepare(self, photo: np.ndarray) -> tuple[Plan, np.ndarray]:
        """(plan, model input float32 [h, w, 3]) of a uint8 [H, W, 3] photo."""
        plan = self.plan(*photo.shape[:2])
        x = transforms.model_pixels(photo, *plan.run, self.augment)
        return plan, _pad_reflect(x, *plan.padded)

    def run(self, inputs: np.ndarray) -> dict:
        """The model on a batch of prepared inputs [B, h, w, 3] of one shape: {"mask": [B, h, w]
        probabilities, and the model's pictures (MadisNet's "retouched" I') [B, h, w, 3] in [0, 1]}."""
        return self._runner(np.asarray(inputs, np.float32))

    @staticmethod
    def finish(output: np.ndarray, plan: Plan) -> np.ndarray:
        """A model-size map [h, w(, C)] back at the photo's size: cropped to the unpadded part,
        resized bilinearly when the photo was resized, clipped to [0, 1]."""
        out = np.asarray(output, np.float32)
        squeeze = out.ndim == 2
        out = out[: plan.run[0], : plan.run[1], None] if squeeze else out[: plan.run[0], : plan.run[1]]
        if plan.run != plan.photo:
            out = _resize_map(out, *plan.photo)
        out = np.clip(out, 0.0, 1.0)
        return out[..., 0] if squeeze else out

    def predict(self, photos: Sequence[np.ndarray]) -> list[dict]:
        """uint8 photos of one size -> one dict each: "mask" [H, W] and the model's pictures
        [H, W, 3], all at the photo's size."""
        prepared = [self.prepare(p) for p in photos]
        outputs = self.run(np.stack([x for _, x in prepared]))
        return [{k: self.finish(v[i], plan) for k, v in outputs.items()}
                for i, (plan, _) in enumerate(prepared)]

    def __call__(self, image) -> np.ndarray:
        """A photo (path, PIL image, [H, W, 3] RGB array) -> float32 probabilities [H, W] in
        [0, 1]; a list of same-size photos -> [N, H, W]."""
        if isinstance(image, list | tuple):
            photos = [jimages.as_rgb(i) for i in image]
            if len({p.shape for p in photos}) > 1:
                raise ValueError("a list of photos is one batch: they must have the same size "
                                 f"(got {sorted({p.shape[:2] for p in photos})}); call once per size")
            return np.stack([r["mask"] for r in self.predict(photos)])
        return self.predict([jimages.as_rgb(image)])[0]["mask"]


def binary_mask(probability: np.ndarray, normalize: bool = True) -> np.ndarray:
    """The official protocol's binary mask of a [H, W] probability map in [0, 1] (a `Localizer`'s
    output): per-image min-max normalization (`normalize`), then > 0.5; bool [H, W]."""
    p = np.asarray(probability, np.float32)
    if normalize:
        p = np.asarray(norm_pred(p[None]))[0]
    return p > THRESHOLD


def as_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A user's mask (path, PIL image, bool / uint8 / float [0, 1] array) as bool [H, W] at the
    photo's `size`: files are binarized at half range and resized nearest when their size
    differs; arrays must already have the photo's size."""
    if isinstance(mask, str) or hasattr(mask, "__fspath__"):
        try:
            return jimages.load_mask(mask, size=size).array[..., 0] > 0
        except jimages.BadImageError as e:
            raise type(e)(f"{os.fspath(mask)}: {e}") from e
    if hasattr(mask, "mode"):  # a PIL image
        mask = np.asarray(mask.convert("L"))
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != tuple(size):
        raise ValueError(f"the mask is {m.shape}, the photo {tuple(size)}: they must match")
    if m.dtype == bool:
        return m
    return m > (127 if m.dtype == np.uint8 else 0.5)


class Harmonizer:
    """A harmonizer checkpoint (RainNet) as a function: (photo, mask) -> uint8 [H, W, 3] RGB.

    The photo as for `Localizer` (a path, a PIL image, an [H, W, 3] RGB array); the mask a path, a
    PIL image, or a bool / uint8 / float [0, 1] array of the photo's size ([H, W]; `as_mask`).

    The region is re-rendered at the size the harmonizer was trained at, and the correction
    (harmonized - input, at that size) is resized bilinearly to the photo and added inside the
    mask: the photo's detail survives and every pixel outside the mask is the input's.
    """

    def __init__(self, loaded: LoadedModel):
        spec = loaded.spec
        if spec.task is not HARMONIZATION:
            raise ValueError(f"{loaded.config.model.name} is a {spec.task.name} model, not a "
                             "harmonizer: use jirl.Localizer (jirl predict --checkpoint)")
        self.loaded = loaded
        self.augment = transforms.AugmentConfig.from_data_config(loaded.config.data)
        self.std = np.asarray(loaded.config.data.std, np.float32)
        self._runner = _Runner(loaded, self._forward)

    @classmethod
    def from_checkpoint(cls, path: str, *, config: ml_collections.ConfigDict | None = None,
                        dtype: str | None = None) -> Harmonizer:
        return cls(load_checkpoint(path, config=config, dtype=dtype))

    @property
    def name(self) -> str:
        return self.loaded.config.model.name

    @property
    def compilations(self) -> int:
        return self._runner.compilations

    def _forward(self, variables: dict, x: jax.Array, mask: jax.Array) -> dict:
        spec = self.loaded.spec
        outputs = self.loaded.model.apply(variables, x, train=False,
                                          **spec.model_inputs({"mask": mask}))
        harmonized = spec.eval_images(outputs)[spec.primary_mask].astype(jnp.float32)
        return {"correction": (harmonized - x) * self.std}  # in [0, 1] units

    def __call__(self, image, mask) -> np.ndarray:
        photo = jimages.as_rgb(image)
        region = as_mask(mask, photo.shape[:2])
        if not region.any():
            return photo
        side = int(self.loaded.config.data.crop_size)
        x = transforms.model_pixels(photo, side, side, self.augment)
        m = transforms.model_mask(region, side, side, self.augment)
        correction = self._runner(x[None], m[None])["correction"][0]
        full = _resize_map(correction, *photo.shape[:2])
        harmonized = np.rint(np.clip(photo / 255.0 + full, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.where(region[..., None], harmonized, photo)
