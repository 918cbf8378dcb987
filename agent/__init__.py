"""A Dreamer-style world-model agent whose latent state is a discrete code."""

__version__ = "0.1.0"
