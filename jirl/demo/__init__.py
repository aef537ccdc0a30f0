"""jirl's local demo page: `python -m jirl.demo --checkpoint CKPT [--harmonizer CKPT]`.

`core` holds the work (photo in, pictures out, through jirl.Localizer / jirl.Harmonizer);
`page` the Gradio page around it (the `demo` extra); `browser` drives the page in a headless
Chromium for the end-to-end test and the latency benchmark.
"""

from jirl.demo.core import Demo, DemoError, Result, load_photo, write_samples

__all__ = ["Demo", "DemoError", "Result", "load_photo", "write_samples"]
