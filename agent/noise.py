"""Temporally correlated noise for the actions an agent explores with (discrete ones: agent.nets.OneHotPolicy).

White noise (independent every step) averages out within a few steps: it rarely carries a car up
MountainCar's hill or swings a pole up. Noise whose power spectrum falls as 1/f**beta keeps pushing
one way for longer: beta = 0 is white, 2 is red (a random walk, which sticks at the action bounds),
and pink (beta = 1) between them was the best single default across tasks in Eberhard et al.,
"Pink Noise Is All You Need: Colored Noise Exploration in Deep Reinforcement Learning" (ICLR 2023).
Here a random pink policy reaches MountainCarContinuous's goal in 38 of 50 episodes, a white one in 0
(benchmarks/noise.py).
"""

from __future__ import annotations

import numpy as np


def colored_noise(beta: float, rows: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` Gaussian sequences of `steps` values, (rows, steps), each value of variance 1, whose power
    spectrum falls as 1/f**beta: random Fourier coefficients scaled by f**(-beta/2), transformed back."""
    freqs = np.fft.rfftfreq(steps)
    freqs[0] = freqs[1] if steps > 1 else 1.0  # the constant component gets the lowest frequency's power
    scale = freqs ** (-beta / 2)
    # irfft keeps only the real part of the constant coefficient (and, for even steps, of the Nyquist one):
    # those get sqrt(2) x the scale, so that beta = 0 is exactly white
    real_only = [0, -1] if steps % 2 == 0 and steps > 1 else [0]
    scale[real_only] *= np.sqrt(2)
    coefficients = scale * (rng.standard_normal((rows, len(freqs))) + 1j * rng.standard_normal((rows, len(freqs))))
    variance = (4 * (scale**2).sum() - 3 * (scale[real_only] ** 2).sum()) / steps**2  # of each value
    return np.fft.irfft(coefficients, n=steps, axis=-1) / np.sqrt(variance)


class ActionNoise:
    """Standard-normal noise for every environment and action dimension, colored along each episode: a
    sequence of `steps` per episode is drawn when the episode starts (and again if it outlasts it).

    >>> noise = ActionNoise(beta=1.0, envs=4, action_dim=2, steps=1000, rng=np.random.default_rng(0))
    >>> eps = noise.next(is_first)                    # (4, 2); is_first (4,) marks episodes that start
    """

    def __init__(self, beta: float, envs: int, action_dim: int, steps: int, rng: np.random.Generator):
        self.beta, self.steps, self.rng = beta, steps, rng
        self.sequences = np.zeros((envs, action_dim, steps))
        self.position = np.full(envs, steps)  # used up: the first call draws every sequence

    def next(self, is_first: np.ndarray) -> np.ndarray:
        for i in np.flatnonzero(np.asarray(is_first, bool) | (self.position >= self.steps)):
            self.sequences[i] = colored_noise(self.beta, self.sequences.shape[1], self.steps, self.rng)
            self.position[i] = 0
        out = self.sequences[np.arange(len(self.position)), :, self.position]
        self.position += 1
        return out.astype(np.float32)
