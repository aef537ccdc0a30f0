"""One direction of imports: jirl's packages stand on layers, and each imports only from the
layers below it (and its own package); no private JAX internals; importing jirl changes no global
state beyond what is documented.

Every rule below is checked on the source (imports at any depth, function-level ones included),
and each has a probe that breaks it on purpose, so that a rule that could never fail is noticed.
"""

import ast
import itertools
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The layers, bottom to top. A module may import its own package and any package on a lower
# layer, never one on a higher layer; the packages of one layer never import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("jirl.cpu", "jirl.files", "jirl.normalization")),  # bf16 units, atomic files, units
    ("configs", ("jirl.configs",)),  # plain data (test_configs_are_plain_data)
    # data, metrics, losses, pictures, and the runtime (checkpoint files, mesh, flags, .pth files)
    ("foundation", ("jirl.data", "jirl.metrics", "jirl.losses", "jirl.visualize", "jirl.runtime")),
    ("tasks", ("jirl.tasks",)),  # what a model does and how it is scored
    ("models", ("jirl.models",)),  # one paper system per file, and the registry
    ("jobs", ("jirl.training", "jirl.convert")),  # the training loop and evaluation; PyTorch import
    ("inference", ("jirl.inference",)),  # Localizer, Harmonizer
    ("engine", ("jirl.predict",)),  # the folder engine behind predict and the demo
    # the front doors: the demo page, the ablation runner, the `jirl` command (and the package
    # itself, whose jirl.Localizer is the public face)
    ("apps", ("jirl.demo", "jirl.ablation", "jirl.cli", "jirl")),
    ("entry", ("jirl.__main__",)),  # python -m jirl: the jirl command
]
# What the layers alone allow but must not happen: inference stands beside training (on the
# runtime, the models and convert), so that the public API never pulls in the training loop.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "jirl.inference": ("jirl.training",),
    "jirl.predict": ("jirl.training",),
    "jirl.demo": ("jirl.training",),
}


def _module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "configs":  # installed as jirl.configs
        parts = ["jirl", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
    parts = name.split(".")
    if parts[:2] == ["jirl", "configs"]:
        parts = parts[1:]
    base = root.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: pathlib.Path, root: pathlib.Path = ROOT) -> set[str]:
    """Every jirl module `path` imports, at any depth (function-level imports included);
    `from jirl import x` is the module jirl.x when x is one, else the package jirl itself."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if _is_module(full, root) else node.module)
    return {n for n in names if n == "jirl" or n.startswith("jirl.")}


def _owner(module: str) -> str | None:
    """The layered package that `module` belongs to (the longest match; "jirl" is the root
    package's own __init__ only, so that a new module under jirl/ must be given a layer)."""
    packages = [p for _, ps in LAYERS for p in ps]
    matches = [p for p in packages if module == p or (p != "jirl" and module.startswith(p + "."))]
    return max(matches, key=len) if matches else None


def _layer(package: str) -> int:
    return next(i for i, (_, ps) in enumerate(LAYERS) if package in ps)


def _violations(sources, root: pathlib.Path = ROOT) -> list[str]:
    """'module imports name (why)' for every import that breaks a rule."""
    found = []
    for path in sources:
        module = _module_name(path, root)
        own = _owner(module)
        if own is None:
            found.append(f"{module} is on no layer")
            continue
        for name in sorted(_imports(path, root)):
            target = _owner(name)
            if target is None:
                found.append(f"{module} imports {name} (on no layer)")
            elif target == own:
                continue
            elif _layer(target) > _layer(own):
                found.append(f"{module} imports {name} (a higher layer)")
            elif _layer(target) == _layer(own):
                found.append(f"{module} imports {name} (a sibling on its layer)")
            elif any(name == f or name.startswith(f + ".")
                     for p, fs in FORBIDDEN.items() if module == p or module.startswith(p + ".")
                     for f in fs):
                found.append(f"{module} imports {name} (forbidden)")
    return found


def _sources(*folders: str) -> list[pathlib.Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_every_import_points_down():
    assert _violations(_sources("jirl", "configs")) == []


def _probe(tmp_path: pathlib.Path, module: str, imported: str) -> list[str]:
    """The violations of a probe module `module` that imports `imported` (inside a function)."""
    parts = module.split(".")
    path = tmp_path.joinpath(*parts).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("jirl", *[".".join(parts[:i]) for i in range(2, len(parts))]):
        (tmp_path.joinpath(*name.split(".")) / "__init__.py").touch()
    target = tmp_path.joinpath(*imported.split("."))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_suffix(".py").touch()
    path.write_text(f"def f():\n    import {imported}\n")
    return _violations([path], tmp_path)


# One mutation per rule: each layer importing the layer above it, each pair of siblings, each
# forbidden import.
UPWARD = [(LAYERS[i][1][0], LAYERS[i + 1][1][0]) for i in range(len(LAYERS) - 1)]
SIBLINGS = [pair for _, ps in LAYERS for pair in itertools.permutations(ps, 2) if "jirl" not in pair]
BANNED = [(p, f) for p, fs in FORBIDDEN.items() for f in fs]


@pytest.mark.parametrize(("low", "high"), UPWARD)
def test_an_upward_import_is_reported(tmp_path, low, high):
    assert _probe(tmp_path, f"{low}._probe", f"{high}._x") == [
        f"{low}._probe imports {high}._x (a higher layer)"]


@pytest.mark.parametrize(("a", "b"), SIBLINGS)
def test_an_import_between_siblings_is_reported(tmp_path, a, b):
    assert _probe(tmp_path, f"{a}._probe", f"{b}._x") == [
        f"{a}._probe imports {b}._x (a sibling on its layer)"]


@pytest.mark.parametrize(("module", "banned"), BANNED)
def test_a_forbidden_import_is_reported(tmp_path, module, banned):
    assert _probe(tmp_path, f"{module}._probe", f"{banned}._x") == [
        f"{module}._probe imports {banned}._x (forbidden)"]


def test_a_module_on_no_layer_is_reported(tmp_path):
    assert _probe(tmp_path, "jirl.newthing._probe", "jirl.models._x") == [
        "jirl.newthing._probe is on no layer"]


def test_no_private_jax_internals():
    used = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in _sources("jirl", "configs", "benchmarks")
        for name in _all_imports(p)
        if name.startswith(("jax._src", "jaxlib."))
    ]
    assert used == []


def _all_imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _non_config_imports(path: pathlib.Path) -> list[str]:
    """What a config file imports besides the standard library's typing helpers, ml_collections
    and the other configs."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    allowed = ("ml_collections", "jirl.configs", "jirl.normalization", "__future__",
               "collections.abc")
    return sorted(n for n in names if not any(n == a or n.startswith(a + ".") for a in allowed))


def test_configs_are_plain_data(tmp_path):
    """Config files import only ml_collections, each other and jirl.normalization's constants:
    no jirl code runs to build them."""
    for path in _sources("configs"):
        assert _non_config_imports(path) == [], path.name
    probe = tmp_path / "probe.py"
    probe.write_text("from jirl.configs import default\nfrom jirl.models import build_model\n")
    assert _non_config_imports(probe) == ["jirl.models"]


def test_importing_jirl_changes_only_the_documented_state():
    """Importing every jirl module leaves absl flags unparsed (no `mark_as_parsed`) and adds only
    the documented CPU scheduler flag to XLA_FLAGS."""
    modules = sorted({_module_name(p) for p in _sources("jirl") if "__main__" not in p.name})
    code = (
        "import os, sys\n"
        "from absl import flags\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
        "import jirl\n"
        "assert not flags.FLAGS.is_parsed(), 'absl flags were marked as parsed'\n"
        "print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags_line = proc.stdout.strip().splitlines()[-1]
    assert flags_line == "XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false"


@pytest.mark.parametrize("preset", ["--xla_cpu_enable_concurrency_optimized_scheduler=true"])
def test_a_users_xla_flag_wins(preset):
    code = "import os, jirl; print(os.environ['XLA_FLAGS'])"
    env = dict(os.environ, XLA_FLAGS=preset)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == preset


def test_every_model_file_exports_the_same_contract():
    """Each registered system is one file with build / objective / eval_masks and a SPEC made
    of exactly those (no model borrows another model file's functions)."""
    import importlib

    from jirl.models import available_models

    names = available_models()
    assert {"dirl", "unet", "rsrnet"} <= set(names)
    for name in names:
        module = importlib.import_module(f"jirl.models.{name}")
        spec = module.SPEC
        assert spec.name == name
        for field in ("build", "objective", "eval_masks"):
            if field == "objective" and spec.train_phases:  # trained by its phases' losses
                assert spec.objective is None
                fns = [phase.loss for phase in spec.train_phases]
            else:
                fns = [getattr(module, field)]
                assert getattr(spec, field) is fns[0], (name, field)
            assert all(fn.__module__ == module.__name__ for fn in fns), (name, field)
        assert all(p.kind in ("resnet34", "vgg16") for p in spec.pretrained)
