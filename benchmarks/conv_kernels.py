"""Which form of a convolution XLA:CPU runs fastest, layer shape by layer shape; one JSON line each.

  python benchmarks/conv_kernels.py                 # every shape below, batch 8
  python benchmarks/conv_kernels.py --batch 1 --calls 8

`jirl.models.cpu_conv.conv2d` runs a conv on the CPU either as XLA's convolution or as one matrix
product of its im2col patches (`_conv_as_im2col`), choosing by `_prefers_im2col`. This script
times both forward forms on the layer shapes of jirl's systems (`conv` rows: milliseconds per
call, GFLOP/s, the form conv2d chooses and whether it is the faster one), and, where torch is
installed, `torch.nn.functional.conv2d` on the same shape and threads. `gemm` rows time the
matrix products those convs come down to, in XLA and in torch (MKL): they show the ceiling
the CPU kernels set, whatever the formulation (docs/performance.md, "What limits RainNet").
"""

import json

from absl import app, flags
from common import seconds_per_call  # (common also puts this checkout's jirl on sys.path)

flags.DEFINE_integer("batch", 8, "Batch of every conv.")
flags.DEFINE_integer("calls", 4, "Timed calls per measurement (after one warm-up).")
FLAGS = flags.FLAGS

# (where, kernel, stride, padding, input size, in channels, out channels)
SHAPES = (
    ("rainnet G layer1", 4, 2, 1, 128, 64, 128),
    ("rainnet G layer2", 4, 2, 1, 64, 128, 256),
    ("rainnet G layer3", 4, 2, 1, 32, 256, 512),
    ("rainnet G codec 16->8", 4, 2, 1, 16, 512, 512),
    ("rainnet G codec 8->4", 4, 2, 1, 8, 512, 512),
    ("rainnet G codec 4->2", 4, 2, 1, 4, 512, 512),
    ("rainnet G codec 2->1", 4, 2, 1, 2, 512, 512),
    ("rainnet G attention 128", 1, 1, 0, 128, 128, 128),
    ("rainnet G attention 64", 1, 1, 0, 64, 256, 256),
    ("rainnet G attention 32", 1, 1, 0, 32, 512, 512),
    ("rainnet D conv2", 3, 2, 0, 127, 64, 128),
    ("rainnet D conv3", 3, 2, 0, 63, 128, 256),
    ("rainnet D conv4", 3, 2, 0, 31, 256, 512),
    ("rainnet D conv5", 3, 2, 0, 15, 512, 512),
    ("rainnet D conv6", 3, 2, 0, 7, 512, 512),
    ("rainnet D conv7", 3, 1, 0, 3, 512, 512),
    ("3x3 at 56", 3, 1, 1, 56, 64, 64),
    ("3x3 at 28", 3, 1, 1, 28, 256, 256),
    ("3x3 at 14", 3, 1, 1, 14, 512, 512),
    ("3x3 at 7", 3, 1, 1, 7, 512, 512),
    ("3x3 stride 2 at 28", 3, 2, 1, 28, 256, 256),
)
# (m, k, n): im2col GEMMs of the shapes above (batch 8) and a square one for the peak.
GEMMS = ((32768, 1024, 128), (7688, 1152, 256), (32768, 256, 1024), (131072, 128, 128),
         (8192, 512, 512), (2048, 4096, 2048))


def conv_row(where, k, stride, padding, size, cin, cout, batch, calls) -> dict:
    import jax
    import numpy as np

    from jirl.models import cpu_conv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, cin)).astype(np.float32)
    kernel = (rng.normal(size=(k, k, cin, cout)) * 0.05).astype(np.float32)
    forms = {"xla": cpu_conv.xla_conv, "im2col": cpu_conv._conv_as_im2col}
    ms = {}
    for name, conv in forms.items():
        fn = jax.jit(lambda x, w, conv=conv: conv(x, w, stride, padding, 1))
        ms[name] = 1e3 * seconds_per_call(lambda fn=fn: jax.block_until_ready(fn(x, kernel)), calls)
    out = cpu_conv._output_size(size, k, stride, padding, 1)
    gflop = 2 * batch * out * out * k * k * cin * cout / 1e9
    chosen = "im2col" if cpu_conv._prefers_im2col(x.shape, kernel.shape, stride, padding, 1) else "xla"
    row = {"row": "conv", "where": where, "kernel": k, "stride": stride, "padding": padding,
           "size": size, "cin": cin, "cout": cout, "batch": batch, "gflop": gflop,
           "ms": ms, "gflops_per_s": {n: gflop / (t / 1e3) for n, t in ms.items()},
           "conv2d_chooses": chosen, "chosen_is_fastest": ms[chosen] <= min(ms.values()) * 1.05}
    torch_ms = _torch_conv_ms(x, kernel, stride, padding, calls)
    if torch_ms is not None:
        row["ms"]["torch"] = torch_ms
        row["gflops_per_s"]["torch"] = gflop / (torch_ms / 1e3)
    return row


def _torch_conv_ms(x, kernel, stride, padding, calls) -> float | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    wt = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
    with torch.no_grad():
        return 1e3 * seconds_per_call(lambda: F.conv2d(xt, wt, stride=stride, padding=padding), calls)


def gemm_row(m, k, n, calls) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.normal(size=(m, k)).astype(np.float32)
    b = rng.normal(size=(k, n)).astype(np.float32)
    gflop = 2 * m * k * n / 1e9
    dot = jax.jit(jnp.dot)
    row = {"row": "gemm", "m": m, "k": k, "n": n, "gflops_per_s": {
        "xla": gflop / seconds_per_call(lambda: jax.block_until_ready(dot(a, b)), calls)}}
    try:
        import torch
    except ImportError:
        return row
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    row["gflops_per_s"]["torch"] = gflop / seconds_per_call(lambda: torch.mm(at, bt), calls)
    return row


def main(argv):
    del argv
    import jax

    from jirl.cpu import cpu_info

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    print(json.dumps({"row": "machine", "cpu": cpu_info(), "jax": jax.__version__,
                      "torch": torch_version, "backend": jax.default_backend()}), flush=True)
    for shape in SHAPES:
        print(json.dumps(conv_row(*shape, FLAGS.batch, FLAGS.calls)), flush=True)
    for m, k, n in GEMMS:
        print(json.dumps(gemm_row(m, k, n, FLAGS.calls)), flush=True)


if __name__ == "__main__":
    app.run(main)
