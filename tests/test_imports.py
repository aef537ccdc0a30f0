"""One direction of imports (config -> data -> models -> losses -> training; convert beside),
no private JAX internals, and importing jirl changes no global state beyond what is documented."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# package -> jirl packages/modules it must never import (directly or inside a function)
FORBIDDEN = {
    "jirl.models": ("jirl.convert", "jirl.training", "jirl.data"),
    "jirl.data": ("jirl.models", "jirl.training", "jirl.convert", "jirl.losses", "jirl.metrics"),
    "jirl.losses": ("jirl.models", "jirl.training", "jirl.convert", "jirl.data"),
    "jirl.metrics": ("jirl.models", "jirl.training", "jirl.convert", "jirl.data"),
    # the converter writes checkpoints and quiets logs, but never reaches the training loop
    "jirl.convert": (
        "jirl.training.loop",
        "jirl.training.steps",
        "jirl.training.state",
        "jirl.training.evaluate",
        "jirl.training.optim",
        "jirl.data",
    ),
    # inference restores checkpoints and places arrays, but never reaches the training loop
    "jirl.inference": ("jirl.training.loop", "jirl.training.steps", "jirl.training.state",
                       "jirl.training.optim", "jirl.training.evaluate", "jirl.predict", "jirl.demo"),
    "jirl.training": ("jirl.inference", "jirl.predict", "jirl.ablation", "jirl.demo"),
    # the demo page sits on top: it runs inference, never the training loop, and nothing
    # below it imports it
    "jirl.demo": ("jirl.training.loop", "jirl.training.steps", "jirl.training.state",
                  "jirl.training.optim", "jirl.training.evaluate", "jirl.ablation"),
    "jirl.predict": ("jirl.demo",),
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(*folders: str) -> list[pathlib.Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _violations(sources, rules) -> list[str]:
    found = []
    for path in sources:
        module = _module_name(path)
        for package, forbidden in rules.items():
            if module == package or module.startswith(package + "."):
                found += [
                    f"{module} imports {name}"
                    for name in sorted(_imports(path))
                    if any(name == f or name.startswith(f + ".") for f in forbidden)
                ]
    return found


def test_imports_go_one_way():
    assert _violations(_sources("jirl"), FORBIDDEN) == []


def test_the_check_sees_a_back_reference(tmp_path):
    """The rule above can fail: a model file importing the training loop is reported."""
    fake = ROOT / "jirl" / "models" / "_probe_back_reference.py"
    fake.write_text("def f():\n    from jirl.training.loop import train_and_evaluate\n")
    try:
        assert _violations([fake], FORBIDDEN) == [
            "jirl.models._probe_back_reference imports jirl.training.loop",
            "jirl.models._probe_back_reference imports jirl.training.loop.train_and_evaluate",
        ]
    finally:
        fake.unlink()


def test_no_private_jax_internals():
    used = [
        f"{_module_name(p)}: {name}"
        for p in _sources("jirl", "configs", "benchmarks")
        for name in _imports(p)
        if name.startswith(("jax._src", "jaxlib."))
    ]
    assert used == []


def test_configs_are_plain_data():
    """Config files import only ml_collections and each other: no jirl code runs to build them."""
    for path in _sources("configs"):
        bad = [
            n
            for n in _imports(path)
            if not n.startswith(("ml_collections", "configs"))
            and n != "__future__"
            and not n.startswith("__future__.")
        ]
        assert bad == [], (path.name, bad)


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
