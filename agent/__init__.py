"""A Dreamer-style world-model agent whose latent state is a discrete code."""

__version__ = "0.1.0"

from agent.agent import Agent, PolicyState

__all__ = ["Agent", "PolicyState", "__version__"]
