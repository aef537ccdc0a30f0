"""jirl: inharmonious region localization in JAX/Flax."""

__version__ = "0.1.0"
