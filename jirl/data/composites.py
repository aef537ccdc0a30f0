"""iHarmony4 naming and loading one (composite, mask, real) triplet with the rules of ``images``.

Composite ``a_b_c.jpg`` -> mask ``a_b.png`` -> real ``a.jpg``: composites made from one real photo
share its stem ``a``, which also groups them when a validation split is carved (``splits``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from etils import epath

from jirl.data.images import BadImageError, LoadedImage, MissingFileError, load_mask, load_rgb


def related_stems(composite_name: str) -> tuple[str, str]:
    """Composite ``a_b_c.jpg`` -> (mask stem ``a_b``, real stem ``a``); else BadImageError."""
    stem = os.path.splitext(composite_name)[0]
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or not all(parts):
        raise BadImageError(f"composite name {composite_name!r} does not follow <a>_<b>_<c>.<ext>")
    return f"{parts[0]}_{parts[1]}", parts[0]


def real_image_key(subset: str, name: str) -> str:
    """``subset/a`` for an iHarmony composite ``a_b_c.ext``; ``subset/<stem>`` for any other name."""
    try:
        stem = related_stems(name)[1]
    except BadImageError:
        stem = os.path.splitext(name)[0]
    return f"{subset}/{stem}"


@dataclasses.dataclass
class Outcome:
    """What became of one listed composite."""

    key: str
    example: dict | None = None
    mask_fraction: float | None = None
    skipped: list[dict] = dataclasses.field(default_factory=list)  # {"file", "reason"}
    converted: list[dict] = dataclasses.field(default_factory=list)  # {"file", "conversions"}
    filtered: bool = False  # left out by the config's mask-fraction rule


def load_triplet(
    composite_path: epath.Path,
    mask_path: epath.Path,
    real_path: epath.Path | None,
    *,
    key: str,
    subset: str,
    name: str,
    display_root: epath.Path | None = None,
) -> Outcome:
    """Loads composite, mask (resized to the composite) and real (None: the composite stands in).

    A missing composite is the only problem reported for its example (a trimmed copy misses
    thousands); otherwise every unusable file of the example is reported.
    """

    def shown(path: epath.Path) -> str:
        if display_root is not None:
            try:
                return os.path.relpath(os.fspath(path), os.fspath(display_root))
            except ValueError:
                pass
        return os.fspath(path)

    outcome = Outcome(key=key)
    loaded: dict[str, LoadedImage] = {}
    paths = {"composite": composite_path, "real": real_path}
    for role in ("composite", "real"):
        if paths[role] is None:
            continue
        try:
            loaded[role] = load_rgb(paths[role])
        except BadImageError as e:
            outcome.skipped.append({"file": shown(paths[role]), "reason": f"{role}: {e}"})
            if role == "composite" and isinstance(e, MissingFileError):
                return outcome
    size = loaded["composite"].array.shape[:2] if "composite" in loaded else None
    try:
        loaded["mask"] = load_mask(mask_path, size)
    except BadImageError as e:
        outcome.skipped.append({"file": shown(mask_path), "reason": f"mask: {e}"})
    if "real" in loaded and size is not None and loaded["real"].array.shape[:2] != size:
        real_hw = loaded["real"].array.shape[:2]
        outcome.skipped.append(
            {
                "file": shown(real_path),
                "reason": f"real: size {real_hw[1]}x{real_hw[0]} differs from the composite's "
                f"{size[1]}x{size[0]}",
            }
        )
    if outcome.skipped:
        return outcome
    if real_path is None:
        loaded["real"] = loaded["composite"]
    mask = loaded["mask"].array
    outcome.mask_fraction = float(np.count_nonzero(mask) / mask.size)
    for role, path in (("composite", composite_path), ("mask", mask_path), ("real", real_path)):
        if path is not None and loaded[role].conversions:
            outcome.converted.append({"file": shown(path), "conversions": loaded[role].conversions})
    outcome.example = {
        "composite": loaded["composite"],
        "mask": loaded["mask"],
        "real": loaded["real"],
        "subset": subset,
        "name": name,
        "mask_fraction": np.float32(outcome.mask_fraction),
    }
    return outcome
