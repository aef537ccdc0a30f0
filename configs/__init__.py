"""The configs jirl ships: `default` (what every experiment shares) and one file per system
(dirl, unet, rsrnet, madisnet, rainnet), each with `get_config(variants)`.

Installed as the package `jirl.configs`, so that `--config dirl:quick` works from any directory
(`jirl.runtime.configs`); `--config configs/dirl.py:quick` reads the file. Config files are plain
data: they import ml_collections and each other, nothing else of jirl.
"""
