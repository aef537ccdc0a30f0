"""TFDS builder ``jirl_synthetic``: the synthetic composites of ``jirl.data.synthetic``.

Prepared once into ``data_dir/jirl_synthetic/<config>/<version>`` as ArrayRecord files (no
TensorFlow needed: images are handed to TFDS as PNG bytes) and reused afterwards. The config name
is derived from the generator settings, so different settings are cached side by side.
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow_datasets as tfds

from jirl.data import synthetic
from jirl.data.features import ArrayRecordBuilder, composite_features, encode_image
from jirl.data.record_index import write_record_index


class _QuietCustomConfig(logging.Filter):
    """Drops TFDS's 'Using custom data configuration' warning for our derived configs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Using custom data configuration: SyntheticConfig(" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietCustomConfig())


def config_name(image_size: int, num_train: int, num_test: int, seed: int) -> str:
    return f"s{image_size}_train{num_train}_test{num_test}_seed{seed}"


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Generator settings; build with ``SyntheticConfig.make(...)`` to get the derived name."""

    image_size: int = 256
    num_train: int = 2000
    num_test: int = 200
    seed: int = 0

    @classmethod
    def make(
        cls, image_size: int = 256, num_train: int = 2000, num_test: int = 200, seed: int = 0
    ) -> SyntheticConfig:
        for key, value, low in (
            ("image_size", image_size, 16),
            ("num_train", num_train, 1),
            ("num_test", num_test, 1),
            ("seed", seed, 0),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"synthetic data: {key} must be an int >= {low}, got {value!r}")
        image_size, num_train, num_test, seed = map(int, (image_size, num_train, num_test, seed))
        return cls(
            name=config_name(image_size, num_train, num_test, seed),
            description=(
                f"{num_train} train / {num_test} test synthetic composites, "
                f"{image_size}x{image_size} px, seed {seed}."
            ),
            image_size=image_size,
            num_train=num_train,
            num_test=num_test,
            seed=seed,
        )


DEFAULT_CONFIG = SyntheticConfig.make()


class SyntheticComposites(ArrayRecordBuilder):
    """Synthetic iHarmony-style composites from photos shipped with scikit-image/scikit-learn."""

    name = "jirl_synthetic"
    VERSION = tfds.core.Version("2.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Image-wide scene variation before compositing (no memorizable photo colours).",
        "2.0.0": "Regions anywhere in the frame (uniform centres, clipped at the border), 5-50 % "
        "log-uniform visible area, single solids, groups of 2-4 parts and thin strokes: the "
        "appearance change is the only cue, not a central location prior.",
        "2.1.0": "Train crops at the test crops' scales (0.7-1.0 of the test square's side; they "
        "were up to 2.3x larger, so test content looked zoomed in); appearance changes of at "
        "least 30/255 mean absolute difference (was 20).",
    }
    BUILDER_CONFIGS = [DEFAULT_CONFIG]
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG.name

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=composite_features("png"),
            supervised_keys=None,
            # Keep generation order: record i of a split is generator example i.
            disable_shuffling=True,
            homepage="https://github.com/bcmi/DIRL-Inharmonious-Region-Localization",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the photos ship with installed packages.
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "test": self._generate_examples("test", cfg.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        keys = []
        for index in range(count):
            ex = synthetic.generate_example(split, index, image_size=cfg.image_size, seed=cfg.seed)
            keys.append((ex["subset"], ex["name"]))
            yield (
                index,
                {
                    "composite": encode_image(ex["composite"]),
                    "mask": encode_image(ex["mask"]),
                    "real": encode_image(ex["real"]),
                    "subset": ex["subset"],
                    "name": ex["name"],
                    "mask_fraction": ex["mask_fraction"],
                },
            )
        # (subset, name) of every record for the validation split; data prepared before it was
        # written gets it from the records (jirl.data.record_index).
        write_record_index(self.data_dir, split, keys)


def synthetic_builder(
    data_dir: str,
    *,
    image_size: int = 256,
    num_train: int = 2000,
    num_test: int = 200,
    seed: int = 0,
    prepare: bool = True,
) -> SyntheticComposites:
    """Returns the builder for these settings, generating the data into ``data_dir`` if needed."""
    config = SyntheticConfig.make(image_size, num_train, num_test, seed)
    if config.name == DEFAULT_CONFIG.name:
        # TFDS refuses a custom config named like a registered one (also when unpickling).
        config = DEFAULT_CONFIG.name
    builder = SyntheticComposites(config=config, data_dir=data_dir, file_format="array_record")
    if prepare:
        builder.download_and_prepare()  # No-op when the data is already there.
    return builder
