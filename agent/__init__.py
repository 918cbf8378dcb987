"""A Dreamer-style world-model agent whose latent state is a discrete code.

Agent      the policy: networks, act, save/load            (agent/agent.py)
Trainer    trains an Agent, owns run folders and resumes   (agent/trainer.py)
evaluate   deterministic evaluation episodes               (agent/evaluate.py)
"""

__version__ = "0.1.0"

from agent.agent import Agent, PolicyState
from agent.evaluate import evaluate
from agent.trainer import Trainer, TrainingError, TrainingInterrupted

__all__ = ["Agent", "PolicyState", "Trainer", "TrainingError", "TrainingInterrupted", "__version__", "evaluate"]
