"""The (subset, name) of every record of a prepared TFDS split, without decoding its images.

Builders write ``record_index_<split>.json`` next to the prepared data (records are in generation
order: the builders disable shuffling). For data prepared without it, the records are read once with
the image features left undecoded (``tfds.decode.SkipDecoding``; TFDS's
``DeserializeMethod.DESERIALIZE_NO_DECODE`` needs TensorFlow) and the index is cached on disk
(atomically; a read-only directory keeps it in memory only) and in memory.
"""

from __future__ import annotations

import json
import os
import threading

from absl import logging
from etils import epath

from jirl import files

RECORD_INDEX = "record_index_{split}.json"
INDEX_FORMAT = "jirl.record_index.v1"
_IMAGE_FEATURES = ("composite", "mask", "real")

_CACHE: dict[tuple, list[tuple[str, str]]] = {}
_LOCK = threading.Lock()


def record_index_path(data_dir: epath.PathLike, split: str) -> epath.Path:
    return epath.Path(data_dir) / RECORD_INDEX.format(split=split)


def write_record_index(data_dir: epath.PathLike, split: str, keys: list[tuple[str, str]]) -> None:
    """Writes the (subset, name) of each record of ``split``, in record order."""
    files.write_json(
        record_index_path(data_dir, split),
        {
            "format": INDEX_FORMAT,
            "split": split,
            "num_records": len(keys),
            "subset": [subset for subset, _ in keys],
            "name": [name for _, name in keys],
        },
    )


def read_record_index(data_dir: epath.PathLike, split: str, num_records: int) -> list[tuple[str, str]] | None:
    """The index of ``split`` if a valid one for ``num_records`` records exists, else None."""
    path = record_index_path(data_dir, split)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logging.warning("ignoring unreadable record index %s (%s); re-reading the records", path, e)
        return None
    if (
        not isinstance(index, dict)
        or index.get("format") != INDEX_FORMAT
        or index.get("num_records") != num_records
        or len(index.get("subset", ())) != num_records
        or len(index.get("name", ())) != num_records
    ):
        logging.warning(
            "ignoring stale record index %s (not %d records); re-reading the records", path, num_records
        )
        return None
    return list(zip(index["subset"], index["name"], strict=True))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def builder_record_keys(builder, split: str) -> list[tuple[str, str]]:
    """(subset, name) of every record of a prepared builder's ``split``, in record order."""
    import tensorflow_datasets as tfds

    data_dir = os.fspath(builder.data_dir)
    num_records = int(builder.info.splits[split].num_examples)
    key = (data_dir, split, num_records)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    keys = read_record_index(data_dir, split, num_records)
    if keys is None:
        source = builder.as_data_source(
            split=split, decoders={name: tfds.decode.SkipDecoding() for name in _IMAGE_FEATURES}
        )
        keys = []
        for i in range(len(source)):
            record = source[i]
            keys.append((_text(record["subset"]), _text(record["name"])))
        try:
            write_record_index(data_dir, split, keys)
        except OSError as e:
            logging.warning(
                "could not cache the record index of %s %s in %s (%s)", builder.name, split, data_dir, e
            )
    with _LOCK:
        _CACHE[key] = keys
    return keys
