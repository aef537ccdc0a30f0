"""The demo's web page (Gradio): upload or drop a photo, see the photo, the probability mask, the
overlay, MadisNet's colour-mapped I' and, with a harmonizer, the harmonized photo with a toggle
to compare it with the input. Everything the page computes comes from `core.Demo.analyze`.

Nothing unbounded: every image input's header is checked against `Demo.max_pixels` before
anything decodes it (the drawing panel's too: `guard_editor`), and the page's files live in one
`Workspace`, trimmed to its size cap after each result and removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from jirl.demo.core import CACHE_MB, Demo, DemoError, Result, check_pixels, trim_folder
from jirl.inference import DEFAULT_LONG_SIDE, POLICIES

# Gradio must not phone home: the demo is offline (no analytics, no update check, no telemetry).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}

IMAGE_HEIGHT = 340  # pixels of page per picture; the picture itself keeps the photo's size
SHOWN = ("harmonized", "input")  # the compare toggle's two states
PENDING_DRAWINGS = 8  # drawings sent to the server (Gradio keeps them in memory) not yet used
POLICY_HELP = ("train: resized to the training size, as the official evaluation (fast, one "
               "program); native: the photo's own size; long_side: resized to that longer side")


def import_gradio():
    """gradio, imported offline; a clear error when the demo extra is not installed."""
    os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})
    try:
        import gradio
    except ImportError as e:
        raise ImportError("the demo needs Gradio: pip install 'jirl[demo]'") from e
    return gradio


def _error(message: str) -> str:
    return f"**Error:** {message}"


class Workspace:
    """The demo's one temporary folder, `root`: Gradio's cache (`cache`: uploads and the files it
    sends, once `serve` makes it GRADIO_TEMP_DIR) holding the panels' pictures and the samples.
    `trim` keeps the cache under `max_bytes`; `remove` deletes it all (at exit; __main__ also on
    SIGTERM, which skips atexit)."""

    def __init__(self, max_bytes: int = CACHE_MB * 2**20, parent: str | None = None):
        self.root = tempfile.mkdtemp(prefix="jirl-demo-", dir=parent)
        self.cache = os.path.join(self.root, "gradio")
        self.pictures = os.path.join(self.cache, "pictures")
        self.samples = os.path.join(self.cache, "samples")
        self.max_bytes = max_bytes
        for folder in (self.pictures, self.samples):
            os.makedirs(folder)
        atexit.register(self.remove)

    def serve(self) -> None:
        """Makes `cache` Gradio's cache and `root` Python's temporary folder; before Gradio is
        imported (some of its modules read GRADIO_TEMP_DIR once)."""
        os.environ["GRADIO_TEMP_DIR"] = self.cache
        os.environ["TMPDIR"] = tempfile.tempdir = self.root

    def trim(self, keep: Sequence[str] = ()) -> list[str]:
        """Deletes the oldest files of the cache beyond `max_bytes`, but never the samples or
        `keep`; returns the paths deleted."""
        return trim_folder(self.cache, self.max_bytes, [*keep, self.samples])

    def remove(self) -> None:
        """Deletes the folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


class Pictures:
    """The panels' pictures as PNG files in the workspace, written at zlib level 1: lossless like
    Gradio's own PNGs but much faster to write (benchmarks/demo_latency.py). In a served
    workspace they are in Gradio's cache, sent without a copy; each result trims the workspace
    to its cap, oldest first."""

    NAMES = ("photo", "probability", "overlay", "retouched", "harmonized")

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._count = 0

    def save(self, result: Result, keep: Sequence[str] = ()) -> dict[str, str | None]:
        """{panel name: PNG path, None where the result has no such picture}; the workspace is
        then trimmed, these files and `keep` (the photo's upload) kept."""
        os.makedirs(self.workspace.pictures, exist_ok=True)
        self._count += 1
        paths = {name: self._write(name, getattr(result, name)) for name in self.NAMES}
        self.workspace.trim([*(p for p in paths.values() if p), *keep])
        return paths

    def _write(self, name: str, image: np.ndarray | None) -> str | None:
        if image is None:
            return None
        path = os.path.join(self.workspace.pictures, f"{self._count:06d}_{name}.png")
        Image.fromarray(image).save(path, format="PNG", compress_level=1)
        return path


def compare_view(pictures: dict | None, shown: str) -> str | None:
    """The picture in the harmonized panel: the harmonized photo or, toggled, the input (None
    once `Pictures` has dropped that result's files)."""
    if not pictures or pictures.get("harmonized") is None:
        return None
    path = pictures["photo"] if shown == "input" else pictures["harmonized"]
    return path if os.path.exists(path) else None


EMPTY = (None,) * 6  # the six picture outputs (and the state) of a result-less event


def drawn_region(editor: dict | None) -> np.ndarray:
    """The region painted in the drawing panel (gr.ImageEditor's value): bool [h, w], True where
    any layer has paint (alpha > 0)."""
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or []
              if layer is not None]
    if not layers:
        raise DemoError("draw over the region to harmonize first")
    alpha = [layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else layer.any(-1)
             for layer in layers]
    return np.any([a > 0 for a in alpha], axis=0)


def page_outputs(demo: Demo, pictures: Pictures, photo_path: str | None, policy: str,
                 long_side: int | None, mask: str | dict | None, shown: str) -> tuple:
    """The page's one event: analyze (with the user's region: a mask file, or the drawing
    panel's value), then (status, photo, mask, overlay, I', harmonized panel, state) as files,
    or the reason why not as the status; it never raises."""
    if not photo_path:  # cleared
        return ("Upload a photo.", *EMPTY)
    try:
        region = drawn_region(mask) if isinstance(mask, dict) else mask
        result = demo.analyze(photo_path, policy, long_side, region)
    except DemoError as e:
        return (_error(str(e)), *EMPTY)
    except Exception as e:  # noqa: BLE001 - the page says so; the server goes on
        logging.exception("jirl.demo: the model failed on %s", photo_path)
        return (_error(f"the model failed on this photo ({type(e).__name__}: {e}); the server "
                       "log has the details"), *EMPTY)
    files = pictures.save(result, keep=[photo_path])
    harmonizer = demo.harmonizer.name if demo.harmonizer is not None else None
    return (result.summary(demo.model_name, harmonizer), files["photo"], files["probability"],
            files["overlay"], files["retouched"], compare_view(files, shown), files)


def drawing_canvas(outputs: tuple) -> dict | None:
    """The drawing panel's new value after an analysis: the photo, nothing painted."""
    files = outputs[-1]
    return {"background": files["photo"], "layers": [], "composite": None} if files else None


def guard_editor(editor: Any, max_pixels: int, drawings: int = PENDING_DRAWINGS) -> Any:
    """`editor` (a gr.ImageEditor) refusing, with a message on the page, a background, layer or
    composite whose header announces more than `max_pixels` (Gradio's preprocess decodes each,
    whatever the editor's type, before the event's function runs), and keeping in memory the
    pictures of at most `drawings` drawings sent but not yet used (the newest)."""
    gr = import_gradio()
    convert, accept = editor.convert_and_format_image, editor.accept_blobs

    def checked(file, *args, **kwargs):
        if file is not None:  # a FileData (an upload), or bytes (the editor's own blobs)
            try:
                check_pixels(getattr(file, "path", None) or io.BytesIO(file), max_pixels,
                             "the drawing")
            except DemoError as e:
                raise gr.Error(str(e)) from e
        return convert(file, *args, **kwargs)

    def accept_blobs(data):
        accept(data)
        for stale in list(editor.blob_storage)[:-drawings]:
            editor.blob_storage.pop(stale, None)

    accept_blobs._is_server_fn = True  # as Gradio's @server: callable by the page
    editor.convert_and_format_image, editor.accept_blobs = checked, accept_blobs
    return editor


def _drawing_panel(gr, max_pixels: int) -> tuple[Any, Any]:
    """(the drawing panel, its button): paint the region to harmonize over the photo."""
    with gr.Accordion("Draw the region to harmonize instead", open=False,
                      elem_id="jirl-draw-panel"):
        drawing = guard_editor(gr.ImageEditor(
            type="numpy", image_mode="RGBA", sources=[], transforms=[], layers=False,
            eraser=gr.Eraser(), brush=gr.Brush(colors=[("#ff3030", 0.6)], color_mode="fixed"),
            label="Paint over the region", elem_id="jirl-draw"), max_pixels)
        button = gr.Button("Harmonize the painted region", elem_id="jirl-draw-run")
    return drawing, button


def build_app(demo: Demo, samples: Sequence[str] = (), title: str = "jirl demo",
              workspace: Workspace | None = None) -> Any:
    """The page as a gradio.Blocks (not launched); its files in `workspace` (a new one if None).
    The mask upload and the drawing panel, and their endpoints, exist only with a harmonizer."""
    gr = import_gradio()
    harmonizer = demo.harmonizer.name if demo.harmonizer is not None else None
    pictures = Pictures(workspace or Workspace())

    def panel(label: str, elem_id: str, **kwargs):
        """An output picture, sent losslessly (PNG, `Pictures`) at the photo's size."""
        return gr.Image(label=label, type="filepath", interactive=False, height=IMAGE_HEIGHT,
                        buttons=["download", "fullscreen"], elem_id=elem_id, scale=1, **kwargs)

    # Gradio's cache of sent pictures: files older than an hour go, checked hourly (and
    # `Workspace.trim` keeps it under its size cap).
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}\nLocalizer: **{demo.model_name}**"
                    + (f" · harmonizer: **{harmonizer}**" if harmonizer else "")
                    + ". Upload or drop a photo: the page marks the region whose colour or "
                    "lighting does not match the rest.")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                photo = gr.File(label="Photo (drop or click)", elem_id="jirl-photo")
                start_policy, start_long_side = demo.policy
                policy = gr.Radio(list(POLICIES), value=start_policy, label="Resolution policy",
                                  info=POLICY_HELP, elem_id="jirl-policy")
                long_side = gr.Number(start_long_side or DEFAULT_LONG_SIDE, precision=0,
                                      label="long_side (pixels)", minimum=32,
                                      elem_id="jirl-long-side")
                mask = (gr.File(label="Your own mask (optional): harmonize this region instead",
                                elem_id="jirl-mask") if harmonizer else gr.State(None))
                button = gr.Button("Run", variant="primary", elem_id="jirl-run")
                if samples:
                    gr.Examples([[p] for p in samples], inputs=[photo], elem_id="jirl-samples",
                                label="Sample composites (embedded synthetic test split)")
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a photo.", elem_id="jirl-status")
                with gr.Row():
                    shown_photo = panel("Photo", "jirl-out-photo")
                    probability = panel("Probability mask", "jirl-out-mask", image_mode="L")
                    overlay = panel("Overlay (binary mask)", "jirl-out-overlay")
                with gr.Row():  # the harmonized photo (2/3 of the row) with its toggle, then I'
                    with gr.Column(scale=2, visible=harmonizer is not None):
                        harmonized = panel("Harmonized", "jirl-out-harmonized",
                                           visible=harmonizer is not None)
                        shown = gr.Radio(list(SHOWN), value="harmonized",
                                         label="The harmonized panel shows", show_label=False,
                                         info="compare the harmonized photo with the input",
                                         elem_id="jirl-compare")
                        drawing, draw_button = (_drawing_panel(gr, demo.max_pixels) if harmonizer
                                                else (None, None))
                    retouched = panel("Colour-mapped I′ (MadisNet)", "jirl-out-retouched",
                                      visible=demo.has_retouched)
                    used = 2 * (harmonizer is not None) + demo.has_retouched
                    if 0 < used < 3:
                        gr.Column(scale=3 - used)  # every panel as wide as those above
        last = gr.State(None)
        outputs = [status, shown_photo, probability, overlay, retouched, harmonized, last]
        inputs = [photo, policy, long_side, mask, shown]
        analysis = outputs if drawing is None else [*outputs, drawing]

        def run(*args):
            """An analysis (the localizer's region or the mask file's); the drawing panel, if
            any, gets the photo, unpainted."""
            out = page_outputs(demo, pictures, *args)
            return out if drawing is None else (*out, drawing_canvas(out))

        photo.change(run, inputs, analysis)  # an upload, a drop or a sample picked
        button.click(run, inputs, analysis)
        if harmonizer:
            mask.change(run, inputs, analysis)
            draw_button.click(functools.partial(page_outputs, demo, pictures),
                              [photo, policy, long_side, drawing, shown], outputs,
                              api_name="harmonize_drawn")
        shown.change(compare_view, [last, shown], [harmonized])
    return app
