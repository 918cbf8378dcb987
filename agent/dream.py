"""What the world model imagines beside what really happened (open-loop prediction).

From windows of a real episode the model sees `context` steps (posterior), then imagines `horizon`
more with the actions actually taken. Errors are reported per imagined step; pictures show the first
window: three panels (real | imagined | difference) for images, one plot per dimension for vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agent.agent import Agent
from agent.play import Episode
from agent.quantize import code_usage
from agent.render import obs_to_rgb, side_by_side, upscale


def dream(agent: Agent, episode: Episode, context: int = 5, horizon: int = 45) -> dict[str, Any]:
    """Open-loop predictions over consecutive windows of `episode`; errors per horizon step. A horizon
    longer than the episode allows is shortened (`horizon` < `horizon_requested` in the result)."""
    steps = episode.length + 1  # observations
    if context < 1 or horizon < 1:
        raise ValueError(f"context and horizon must be >= 1, got {context} and {horizon}")
    if steps < context + 1:
        raise ValueError(f"the episode has {steps} observations, fewer than context + 1 = {context + 1}")
    requested, horizon = horizon, min(horizon, steps - context)
    window = context + horizon
    starts = list(range(0, steps - window + 1, horizon))
    device = agent.device
    actions = np.concatenate([episode.actions, np.zeros((1, agent.action_dim), np.float32)])  # none after the last
    # what arrived with each observation: the reward of the step into it, and whether the episode goes on
    rewards = np.concatenate([[0.0], episode.rewards])
    conts = np.ones(steps)
    conts[-1] = 0.0 if episode.terminated else 1.0
    obs = torch.as_tensor(np.stack([episode.obs[s : s + window] for s in starts]), device=device)
    act = torch.as_tensor(np.stack([actions[s : s + window] for s in starts]), device=device, dtype=torch.float32)
    out = {k: v.cpu().numpy() for k, v in agent.world_model.open_loop(obs, act, context).items()}
    real = obs.cpu().numpy()
    images = real.ndim == 5
    scale = 255.0 if images else 1.0
    sq = ((out["obs"].astype(np.float64) - real) / scale) ** 2
    obs_error = sq.reshape(*sq.shape[:2], -1).mean(-1)  # (W, window)
    real_rewards = np.stack([rewards[s : s + window] for s in starts])
    real_conts = np.stack([conts[s : s + window] for s in starts])
    table = [
        {
            "step": k,
            "obs_mse": float(obs_error[:, context - 1 + k].mean()),
            "reward_abs_error": float(np.abs(out["reward"] - real_rewards)[:, context - 1 + k].mean()),
            "cont_abs_error": float(np.abs(out["cont"] - real_conts)[:, context - 1 + k].mean()),
        }
        for k in range(1, horizon + 1)
    ]
    # how much of the code's alphabet the episode uses (posterior codes of every real step)
    with torch.no_grad():
        whole = torch.as_tensor(episode.obs[None], device=device)
        first = torch.zeros(1, steps, dtype=torch.bool, device=device)
        first[0, 0] = True
        index = agent.world_model.observe(whole, torch.as_tensor(actions[None], device=device), first).index
    usage = code_usage(index, agent.world_model.quantizer.alphabet)
    return {
        "env_id": agent.config.env_id,
        "quantizer": agent.config.quantizer,
        "context": context,
        "horizon": horizon,
        "horizon_requested": requested,
        "windows": len(starts),
        "episode_length": episode.length,
        "errors": table,
        "reconstruction_mse": float(obs_error[:, :context].mean()),
        "code_usage": usage["usage"],
        "code_perplexity": usage["perplexity"],
        "alphabet_size": int(sum(agent.world_model.quantizer.alphabet)),
        "first_window": {
            "real": real[0],
            "imagined": out["obs"][0],
            "reward": (real_rewards[0], out["reward"][0]),
            "cont": (real_conts[0], out["cont"][0]),
        },
    }


def dream_frames(result: dict[str, Any]) -> list[np.ndarray]:
    """Image envs: one frame per step of the first window, real | imagined | difference."""
    window = result["first_window"]
    frames = []
    for real, imagined in zip(window["real"], window["imagined"], strict=True):
        real_rgb, imagined_rgb = obs_to_rgb(real), obs_to_rgb(imagined)
        difference = np.abs(real_rgb.astype(np.int16) - imagined_rgb.astype(np.int16)).astype(np.uint8)
        frames.append(upscale(side_by_side(real_rgb, imagined_rgb, difference), 240))
    return frames
