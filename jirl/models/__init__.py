"""Model registry: `config.model.name` -> the module `jirl.models.<name>` and its `SPEC`.

A new system is one file here that defines `build`, `objective`, `eval_masks` and
`SPEC = ModelSpec(...)`, plus one config file. This package imports nothing from the data, training
or conversion code: those depend on it, never the other way round.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jirl.tasks import LOCALIZATION, Task


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An ImageNet network a model can start from, and how its PyTorch state_dict maps onto the
    model: `config.model.<key>` names the torchvision .pth file; `rules` rename its modules
    (regex -> parameter path, as `jirl.runtime.mapping.assign` reads them) into the subtree
    `prefix` ("" for the whole model); keys matching `unused` have no counterpart; every leaf
    under `required` ("<collection>/<path>/", relative to `prefix`) must be filled. The model
    file that owns the parameter names declares it; `jirl.runtime.pretrained` loads it."""

    key: str
    kind: str
    rules: tuple[tuple[str, str], ...]
    unused: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    prefix: str = ""

    def under(self, prefix: str) -> Pretrained:
        """The same network placed in the subtree `prefix` of an enclosing model."""
        return dataclasses.replace(self, prefix="/".join(p for p in (prefix, self.prefix) if p))


FROZEN_GROUP = "frozen"  # the optimizer group that gets no update and no state (ModelSpec.param_labels)


@dataclasses.dataclass(frozen=True)
class TrainPhase:
    """One optimizer update of a train step, for models trained in alternating steps (a GAN's
    discriminator then generator step on the same batch).

    loss(apply_fn, params, batch_stats, batch, rng, loss_cfg, shared) -> (loss, (logs,
    batch_stats)) is differentiated with respect to the parameters of `groups`
    (`ModelSpec.param_groups`) only: the other groups' parameters are constants of this phase
    (no gradient is computed for them) and only `groups` are updated, with their optimizers'
    states. Each phase sees the params and statistics the previous one left, and every phase of
    a step gets the same `rng`. `shared` is what the spec's `train_forward` computed once for the
    whole step (None without one); with `through_forward`, the phase's gradient also flows back
    through `shared` into its groups' parameters (the forward's pullback, kept from that one
    run), otherwise `shared` is a constant of the phase.
    """

    name: str
    loss: Callable[..., Any]
    groups: tuple[str, ...]
    through_forward: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the training and evaluation code needs to know about one paper system.

    build(model_cfg, dtype) -> flax module whose __call__(image, train) returns a dict of outputs.
    objective(outputs, batch, loss_cfg) -> (scalar loss, dict of named scalars to log).
    eval_masks(outputs) -> {name: [B,H,W,1] probability mask} scored by eval.py.
    pretrained: the ImageNet networks the model can start from (`Pretrained`: which config key
        names the file, how its state_dict maps onto which subtree).
    primary_mask: the eval_masks entry (a harmonizer's: the eval_images entry) that selects the
        best checkpoint (by its task's `selection` metric) and is logged as val/.
    step_masks(outputs) -> {name: mask} of an iterative model's intermediate masks, scored when
        `config.eval.per_iteration` is set; None for models without iterations.
    train_inputs(batch) -> keyword arguments of the model's training call beyond the image (e.g.
        MadisNet's domain encoder reads the ground-truth mask); None when there are none.
    param_groups, param_labels(params): the names of the model's optimizer groups, and a tree of
        the params' structure whose leaves name each parameter's group (one optax optimizer per
        group, `config.optimizer.groups.<group>` overriding its settings); the group "frozen"
        gets no update and no optimizer state. None: one optimizer for all.
    eval_images(outputs) -> {name: [B,H,W,3] image in [0, 1]} that `jirl eval --save_outputs` writes
        beside the masks without scoring them (MadisNet's mapped image I'); None: none.
    for_config(model_cfg) -> the ModelSpec of this configuration, for systems whose objective,
        masks or pretrained parts depend on it (MadisNet's, on its localizer); None: this one.
    train_phases: the optimizer updates of one train step, in order (`TrainPhase`); () is one
        supervised update of all parameters by `objective`.
    train_forward(apply_fn, params, batch_stats, batch, rng) -> (shared, batch_stats): the part
        of a phased step that its phases share, run once per step at the step's initial params
        (a GAN's generator output, which the official step computes once for the D and the G
        update); None: none. The phases then update disjoint groups, so that the forward's
        pullback is still the gradient at the params a `through_forward` phase sees.
    task: what the model does and how it is scored (`jirl.tasks`): LOCALIZATION (predicts
        masks, scored by AP / F1 / IoU) or HARMONIZATION (takes the mask as an input,
        `model_inputs`, and re-renders the image: scored by MSE / PSNR / fMSE of
        `eval_images(outputs)["harmonized"]` against the real image).
    model_inputs(batch) -> keyword arguments of every call of the model beyond the image (a
        harmonizer's mask); None when there are none.
    harmonization_inputs(batch) -> (composite, mask, real): what a harmonizer is given and scored
        against, from a batch with a real image (RainNet re-composites comp * M + real * (1 - M),
        as its official dataset does).
    """

    name: str
    build: Callable[..., Any]
    objective: Callable[..., Any] | None
    eval_masks: Callable[..., Any]
    pretrained: tuple[Pretrained, ...] = ()
    primary_mask: str = "mask"
    step_masks: Callable[..., Any] | None = None
    train_inputs: Callable[..., dict] | None = None
    param_groups: tuple[str, ...] = ()
    param_labels: Callable[..., Any] | None = None
    eval_images: Callable[..., dict] | None = None
    for_config: Callable[..., ModelSpec] | None = None
    train_phases: tuple[TrainPhase, ...] = ()
    train_forward: Callable[..., tuple] | None = None
    task: Task = LOCALIZATION
    model_inputs: Callable[..., dict] | None = None
    harmonization_inputs: Callable[..., tuple] | None = None


def available_models() -> list[str]:
    """Names of the model files that define a SPEC."""
    import jirl.models as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("layers", "resnet", "ihdrnet"):
            continue
        if getattr(importlib.import_module(f"jirl.models.{info.name}"), "SPEC", None):
            names.append(info.name)
    return sorted(names)


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of `name`; a clear error lists the available ones."""
    try:
        module = importlib.import_module(f"jirl.models.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"jirl.models.{name}":
            raise
        module = None
    spec = getattr(module, "SPEC", None)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return spec


# config.model keys that are not module fields: read by the registry and the pretrained loaders
NON_MODULE_KEYS = ("name", "backbone_weights", "vgg_weights")


def from_config(module_cls: type, cfg: Any, dtype: Any, **overrides: Any) -> Any:
    """`module_cls` from `config.model`: every key is a module field (lists become tuples).

    A key that is neither a field nor in NON_MODULE_KEYS is an error, so that a misspelt or
    stale architecture key cannot be silently ignored. `overrides` replace values after a
    model-specific translation (e.g. an "auto" setting).
    """
    fields = {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name"}
    unknown = sorted(set(cfg.keys()) - fields - set(NON_MODULE_KEYS))
    if unknown:
        raise ValueError(f"config.model has keys that {module_cls.__name__} does not take: "
                         f"{unknown}; its fields are {sorted(fields - {'dtype'})}")
    kwargs = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in cfg.items()
              if k in fields}
    return module_cls(**{**kwargs, **overrides, "dtype": dtype})


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(config: Any) -> Any:
    """The compute dtype named by `config.dtype`, with a clear error for an unknown name."""
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[config.dtype]


def resolve_spec(model_cfg: Any) -> ModelSpec:
    """The ModelSpec of the configuration `model_cfg` (`config.model`): the registered one of its
    name, specialized by its `for_config` when it has one."""
    spec = get_spec(model_cfg.name)
    return spec.for_config(model_cfg) if spec.for_config is not None else spec


def build_model(config: Any) -> tuple[ModelSpec, nn.Module]:
    """The ModelSpec of `config.model` (`resolve_spec`) and the model built from it."""
    spec = resolve_spec(config.model)
    return spec, spec.build(config.model, dtype=compute_dtype(config))


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """{"params", "batch_stats"} of `model` initialized on a zero image batch of `image_shape`.

    Models create every parameter at initialization, training-only parts included (MadisNet's
    domain encoder), although the call is in evaluation mode.
    """
    variables = model.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_model_variables(config: Any, model: nn.Module, seed: int | None = None) -> dict:
    """Randomly initialized {"params", "batch_stats"} at the configured input size (jitted)."""
    size = config.data.crop_size
    rng = jax.random.PRNGKey(config.seed if seed is None else seed)
    return jax.jit(lambda r: init_variables(model, r, (1, size, size, 3)))(rng)
