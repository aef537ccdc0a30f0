"""The validation split: a seeded share of the training split, disjoint from it by real image.

Composites made from one real photo (iHarmony naming ``a_b_c.jpg`` -> real ``a``, qualified by the
subset) form a group; a name that does not follow ``a_b_c`` is a group of its own. Groups are
ordered by ``sha256(f"{seed}:{group}")`` and whole groups are taken, in that order, until the
validation split holds at least ``round(fraction * N)`` of the ``N`` training examples. The rest is
the training split. Both keep the base split's record order, so the result depends only on the
(group keys, fraction, seed), not on the machine, the process or the worker count.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
    """Indices into the base training split, each ascending; together a partition of it."""

    train: np.ndarray
    val: np.ndarray


def _order(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}:{group}".encode()).digest()


def carve_validation(group_keys: Sequence[str], fraction: float, seed: int) -> ValidationSplit:
    """Splits record indices ``0..len(group_keys)-1`` into train and validation (see the module doc)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in [0, 1), got {fraction!r}")
    num = len(group_keys)
    members: dict[str, list[int]] = {}
    for index, group in enumerate(group_keys):
        members.setdefault(group, []).append(index)
    target = round(fraction * num)
    val: list[int] = []
    for group in sorted(members, key=lambda g: _order(seed, g)):
        if len(val) >= target:
            break
        val += members[group]
    is_val = np.zeros(num, bool)
    is_val[val] = True
    return ValidationSplit(train=np.flatnonzero(~is_val), val=np.flatnonzero(is_val))


class IndexView(Sequence):
    """Random access to ``base[indices[i]]``: a split carved out of another without copying it."""

    def __init__(self, base: Sequence, indices: np.ndarray, *, name: str = ""):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name = name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.base[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"IndexView({self.name or 'split'}: {len(self)} of {len(self.base)} records of {self.base!r})"
