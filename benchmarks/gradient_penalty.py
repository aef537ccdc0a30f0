"""RainNet's discriminator step: how to formulate the gradient penalty for XLA; one JSON line per row.

  python benchmarks/gradient_penalty.py                       # 256 px, batch 8, float32
  python benchmarks/gradient_penalty.py --size 64 --batch 2 --steps 2

The penalty weight * mean_b (||grad_x D(x_hat)||_2 - 1)^2 needs the gradient of a gradient. Rows:
  plain_d          D's hinge loss on fake and real, no penalty: the first-order reference
  reverse_over_forward
                   g = grad_x D (a reverse pass with D's weights held constant), v = d penalty / dg,
                   and the weights' gradient as that of the directional derivative
                   <v, grad_x D> = jvp_x D . v (forward mode inside, reverse outside); the value
                   is the penalty itself (a stop_gradient'ed correction)
  linearize        one jax.linearize of D at x_hat: its transpose gives g, its tangent map at v the
                   directional derivative, differentiated with respect to D's weights
  library          `jirl.models.rainnet.gradient_penalty`, what the train step uses: jax.grad of a
                   loss that calls jax.grad (reverse over reverse, the textbook form)
Each formulation runs with the convolution jirl uses on CPU ("tapwise": `jirl.models.cpu_conv`
and `layers.add_bias`, custom VJPs, hence reverse mode only) and with XLA's own conv and a plain
bias add ("xla", which forward mode needs). Each row times the D-phase loss and its gradient
with respect to D's parameters (what `steps.make_phase_runner` computes), jitted, after a check
in float64 at 64 px that its loss and gradient equal the library's (rtol 1e-9).
"""

import json
import os
import time

from absl import app, flags

flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("size", 256, "Square input size (the official 256).")
flags.DEFINE_integer("steps", 3, "Timed steps per row (after compile and one warm-up).")
FLAGS = flags.FLAGS


def _penalty(grads, weight):
    norms = _jnp().linalg.norm(grads.reshape(grads.shape[0], -1) + 1e-16, axis=1)
    return weight * _jnp().mean(_jnp().square(norms - 1.0))


def _jnp():
    import jax.numpy as jnp

    return jnp


def _score(rn, apply_fn, params, batch_stats, mask):
    import jax.numpy as jnp

    def score(x):
        out, stats = rn._discriminate(apply_fn, params, batch_stats, x, mask, "penalized_score")
        return jnp.sum(out), stats

    return score


def reverse_over_forward(rn, apply_fn, params, batch_stats, real, fake, mask, alpha, weight):
    import jax

    x_hat = alpha * real + (1 - alpha) * fake
    frozen = _score(rn, apply_fn, jax.lax.stop_gradient(params), batch_stats, mask)
    grads, stats = jax.grad(frozen, has_aux=True)(jax.lax.stop_gradient(x_hat))
    value, v = jax.value_and_grad(_penalty)(grads, weight)
    live = _score(rn, apply_fn, params, batch_stats, mask)
    _, directional = jax.jvp(lambda x: live(x)[0], (x_hat,), (v,))
    return value + directional - jax.lax.stop_gradient(directional), stats


def linearize(rn, apply_fn, params, batch_stats, real, fake, mask, alpha, weight):
    import jax

    x_hat = alpha * real + (1 - alpha) * fake
    score = _score(rn, apply_fn, params, batch_stats, mask)
    _, tangent, stats = jax.linearize(score, x_hat, has_aux=True)
    (grads,) = jax.linear_transpose(tangent, x_hat)(1.0)
    value, v = jax.value_and_grad(_penalty)(jax.lax.stop_gradient(grads), weight)
    directional = tangent(jax.lax.stop_gradient(v))
    return value + directional - jax.lax.stop_gradient(directional), stats


def plain_d(rn, apply_fn, params, batch_stats, real, fake, mask, alpha, weight):
    del real, fake, mask, alpha, weight, rn, apply_fn, params
    return 0.0, batch_stats


def _setup(size: int, batch: int, dtype):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jirl.configs import rainnet as rc

    from jirl.models import build_model, init_model_variables

    config = rc.get_config()
    if size <= 64:
        config.model.update(ngf=4, blocks=1, ndf=8, d_strided=2)
    config.data.crop_size = size
    spec, model = build_model(config)
    model = spec.build(config.model, dtype=dtype)
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), init_model_variables(config, model))
    rng = np.random.default_rng(0)
    mask = (rng.random((batch, size, size, 1)) < 0.3).astype(np.float32)
    b = {"image": rng.uniform(-1, 1, (batch, size, size, 3)), "mask": mask,
         "real": rng.uniform(-1, 1, (batch, size, size, 3))}
    b = jax.tree.map(lambda a: jnp.asarray(a, dtype), b)
    fake = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), dtype)
    return config, model, variables, b, fake


def d_phase(penalty, conv, config, model, variables, batch, fake):
    """jit(params -> (D-phase loss, its gradient)) with `penalty` in place of the library's and
    `conv` ("tapwise" or "xla") as every layer's convolution."""
    import jax

    import jirl.models.layers as layers
    import jirl.models.rainnet as rn
    from jirl.models.cpu_conv import xla_conv

    def loss(params_d):
        params = dict(variables["params"], d=params_d)
        originals = rn.gradient_penalty, layers.conv2d, layers.add_bias
        try:
            if penalty:
                rn.gradient_penalty = lambda *a, **k: penalty(rn, *a, **k)
            if conv == "xla":
                layers.conv2d = lambda x, k, stride=1, padding=0, dilation=1: xla_conv(
                    x, k, stride, padding, dilation)
                layers.add_bias = lambda y, b: y + b.astype(y.dtype)
            value, _ = rn.discriminator_loss(model.apply, params, variables["batch_stats"], batch,
                                             jax.random.PRNGKey(0), config.loss, fake)
        finally:
            rn.gradient_penalty, layers.conv2d, layers.add_bias = originals
        return value

    return jax.jit(jax.value_and_grad(loss))


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    formulations = {"plain_d": plain_d, "library": None,
                    "reverse_over_forward": reverse_over_forward, "linearize": linearize}
    rows = [(name, conv) for name in formulations for conv in ("tapwise", "xla")
            if conv == "xla" or name not in ("reverse_over_forward", "linearize")]
    with jax.enable_x64(True):
        small = _setup(64, 2, jnp.float64)
        want = d_phase(None, "tapwise", *small)(small[2]["params"]["d"])
        for name, conv in rows:
            if name == "plain_d" or (name, conv) == ("library", "tapwise"):
                continue
            got = d_phase(formulations[name], conv, *small)(small[2]["params"]["d"])
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12,
                                           err_msg=f"{name}/{conv}")
    setup = _setup(FLAGS.size, FLAGS.batch, jnp.float32)
    for name, conv in rows:
        fn = d_phase(formulations[name], conv, *setup)
        params = setup[2]["params"]["d"]
        t0 = time.perf_counter()
        compiled = fn.lower(params).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(params))
        t0 = time.perf_counter()
        for _ in range(FLAGS.steps):
            out = compiled(params)
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - t0) / FLAGS.steps
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(json.dumps({"benchmark": "gradient_penalty", "row": name, "conv": conv, "batch": FLAGS.batch,
                          "size": FLAGS.size, "seconds": round(seconds, 4),
                          "compile_seconds": round(compile_s, 2),
                          "gflops": round(float(cost.get("flops", 0.0)) / 1e9, 2),
                          "cpu_count": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    app.run(main)
