"""A local web page to try a localizer (and a harmonizer) on your own photos.

  jirl demo --checkpoint runs/dirl_quick          (or python -m jirl.demo ...)
  jirl demo --checkpoint runs/dirl_quick --harmonizer runs/rainnet_quick --port 7860

Then open http://127.0.0.1:7860. The page listens on 127.0.0.1 only, so nothing outside this
machine reaches it; --host 0.0.0.0 opens it to your network (anyone who can reach the port can
run the model on their files). Needs the demo extra: pip install -e '.[demo]'.

Its files (Gradio's uploads and sent pictures, the samples) live in one temporary folder, kept
under --cache_mb (the oldest go first) and removed when it stops, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import sys

from absl import flags

from jirl.data.images import BadImageError
from jirl.demo import core
from jirl.demo.page import Workspace, build_app
from jirl.inference import DTYPES, Harmonizer, Localizer
from jirl.predict import default_compile_cache, define_resize_flags, enable_compile_cache, resize_policy
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import CheckpointError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Localizer checkpoint (workdir, checkpoint or step "
                        "directory; a workdir's best checkpoint is preferred).")
    flags.DEFINE_string("harmonizer", None, "Harmonizer checkpoint (RainNet): also show the "
                        "harmonized photo, with a toggle to compare it with the input.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on: 127.0.0.1 (default) is this "
                        "machine only; 0.0.0.0 every network interface.")
    flags.DEFINE_integer("port", 7860, "Port to listen on.")
    define_resize_flags()  # the page's initial policy
    jflags.define_dtype_flag(DTYPES, "auto", "The localizer's compute dtype (as jirl predict's).")
    flags.DEFINE_integer("max_pixels", core.MAX_PIXELS, "Largest photo accepted (pixels).")
    flags.DEFINE_integer("max_run_pixels", core.MAX_RUN_PIXELS, "Largest size (pixels, padding "
                         "included) the native / long_side policies may run the model at.")
    flags.DEFINE_integer("max_file_mb", 100, "Largest upload accepted (MB).")
    flags.DEFINE_integer("cache_mb", core.CACHE_MB, "Disk the page's files may take (MB): uploads "
                         "and the pictures sent, the oldest deleted first (the latest result "
                         "always stays).")
    flags.DEFINE_integer("samples", 4, "Sample composites offered on the page (0: none).")
    flags.DEFINE_bool("warmup", True, "Compile the training-size program before serving.")
    flags.DEFINE_string("compile_cache", default_compile_cache(), "Directory that keeps the compiled "
                        "programs for the next start (jax's persistent cache); '' turns it off.")
    flags.mark_flag_as_required("checkpoint")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the server closes and the workspace goes (atexit skips SIGTERM)."""
    raise KeyboardInterrupt


def main(argv) -> int:
    jflags.begin(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    workspace = Workspace(FLAGS.cache_mb * 2**20)
    workspace.serve()  # before Gradio is imported
    try:
        return _serve(workspace)
    except KeyboardInterrupt:
        print("demo: stopped before serving", file=sys.stderr)
        return 1
    finally:
        workspace.remove()


def _serve(workspace: Workspace) -> int:
    """Loads the models and serves the page until Ctrl-C or SIGTERM; the exit status."""
    try:
        if FLAGS.compile_cache:
            enable_compile_cache(FLAGS.compile_cache)
        resize, long_side = resize_policy()
        localizer = Localizer.from_checkpoint(FLAGS.checkpoint, dtype=FLAGS.dtype, resize=resize,
                                              long_side=long_side)
        harmonizer = Harmonizer.from_checkpoint(FLAGS.harmonizer) if FLAGS.harmonizer else None
        demo = core.Demo(localizer, harmonizer, max_pixels=FLAGS.max_pixels,
                         max_run_pixels=FLAGS.max_run_pixels)
    except (OSError, CheckpointError, ValueError, BadImageError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    if FLAGS.warmup:
        print(f"compiling {demo.model_name} for {localizer.train_size} px ...", flush=True)
        print(f"ready in {demo.warm_up():.1f} s", flush=True)
    samples = core.write_samples(workspace.samples, FLAGS.samples)
    page = build_app(demo, samples, workspace=workspace)
    page.queue(default_concurrency_limit=1)  # one model call at a time
    try:  # quiet: Gradio's own lines advertise a share=True that jirl does not offer
        page.launch(server_name=FLAGS.host, server_port=FLAGS.port,
                    max_file_size=f"{FLAGS.max_file_mb}mb", ssr_mode=False, share=False,
                    inbrowser=False, footer_links=[], quiet=True, prevent_thread_lock=True)
    except OSError as e:
        print(f"demo: cannot listen on {FLAGS.host}:{FLAGS.port} ({e}); choose another "
              "--port", file=sys.stderr)
        return 2
    print(f"the demo page: http://{FLAGS.host}:{FLAGS.port} (Ctrl-C stops it)", flush=True)
    page.block_thread()  # returns on Ctrl-C / SIGTERM, the server closed
    return 0


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()
