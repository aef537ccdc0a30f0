"""Files that are either whole or absent: every jirl output goes through `atomic_write`.

A file is written to a temporary name beside its destination and renamed onto it once complete
(`os.replace`, atomic on POSIX and Windows within one file system), so a crash, a full disk or
Ctrl-C never leaves a half-written file under the real name; the temporary file is removed when
the write fails.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object store (gs://, s3://, ...) rather than a local file."""
    return "://" in os.fspath(path)


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an `etils.epath.Path`: remote paths (gs://bucket/run) as they are, local ones made
    absolute (with ~ expanded), so that the workdir, checkpoints and outputs are the same
    whichever file system holds them."""
    p = os.fspath(p)
    return epath.Path(p if is_remote(p) else os.path.abspath(os.path.expanduser(p)))


@contextlib.contextmanager
def _remote_write(target: epath.Path, mode: str) -> Iterator[IO]:
    """Object stores publish an object only when its upload completes: written in memory, then
    uploaded once, nothing is left under the name when the block raises."""
    buffer = io.BytesIO() if "b" in mode else io.StringIO()
    yield buffer
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open(mode) as f:
        f.write(buffer.getvalue())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside `path` (text: UTF-8; "wb": bytes), renamed to `path` when
    the block ends without an exception and deleted when it raises. Parent folders are created.
    On an object store (gs://...) the object is uploaded once, when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r}; use 'w' (text) or 'wb' (bytes)")
    if is_remote(path):
        with _remote_write(epath.Path(os.fspath(path)), mode) as f:
            yield f
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# `atomic_write`'s temporary names: ".<name>.<mkstemp's 8 characters>.tmp".
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_temporaries(paths: Iterable[str]) -> None:
    """Deletes the temporary files that an `atomic_write` of one of `paths` left when its process
    was killed (an exception removes its own)."""
    wanted = collections.defaultdict(set)
    for path in paths:
        wanted[os.path.dirname(os.fspath(path))].add(os.path.basename(os.fspath(path)))
    for folder, names in wanted.items():
        with contextlib.suppress(OSError):
            for entry in os.listdir(folder):
                match = _TEMPORARY.match(entry)
                if match and match["name"] in names:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, entry))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_write(path) as f:
        f.write(text)


def strict(payload: Any) -> Any:
    """`payload` with every non-finite float (NaN, +-inf, numpy scalars included) replaced by None,
    so that it serializes as strict JSON (RFC 8259 has no NaN); containers are copied."""
    if isinstance(payload, dict):
        return {k: strict(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [strict(v) for v in payload]
    if hasattr(payload, "item") and getattr(payload, "shape", None) == ():  # numpy / jax scalar
        payload = payload.item()
    if isinstance(payload, float) and not math.isfinite(payload):
        return None
    return payload


def dumps(payload: Any, indent: int | None = None) -> str:
    """Strict JSON text of `payload` (non-finite numbers become null; see `strict`)."""
    return json.dumps(strict(payload), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    """Writes `payload` as strict JSON (see `strict`) to `path` atomically."""
    with atomic_write(path) as f:
        f.write(dumps(payload, indent=indent))


def user_cache_dir(*parts: str) -> str:
    """jirl's folder under the user's cache, $XDG_CACHE_HOME/jirl (default ~/.cache/jirl), joined
    with `parts` (not created: the writer creates it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jirl", *parts)
