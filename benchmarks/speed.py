"""Speed benchmark: where a training step's time goes, per preset, on the current device.

Per preset: milliseconds per world-model update and per actor-critic update (imagination + losses +
backward), median over repeats after warm-up; FLOPs per update (torch's FLOP counter) and the
GFLOP/s they were done at, beside this machine's matmul throughput in float32 and in bfloat16 (measured
here too: the batched parts multiply in bf16 where model.precision resolves to it); imagined latent
steps per second; acting latency per env step (batch 1 and batched over 8 environments); end-to-end
env steps per second at the preset's train ratio; parameter counts; replay bytes per stored step;
peak resident memory. Also: collection throughput (policy acting, no training) for 1, 2, 4 and 8
environments, sync and async; and with --profile, the PyTorch profiler's top operators of one
update of the first preset.

    python benchmarks/speed.py                      # presets tiny, default, xs; CPU
    python benchmarks/speed.py --presets default --device cuda
    python benchmarks/speed.py --presets default --profile --e2e-steps 0 --collect-steps 0
    python benchmarks/speed.py --presets --obs pixels --out benchmarks/results/speed-pixels.json  # collection only
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from learning import code_commit  # benchmarks/
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

import envs
from agent import Agent
from agent.agent import make_env_config
from agent.checkpoint import atomic_write_text
from agent.config import parse_overrides
from agent.nets import use_bf16
from agent.trainer import Trainer, set_threads, updates_due
from agent.world_model import Latent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048) -> float:
    """Matmul throughput of this machine in a dtype (GFLOP/s), large square products."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    ms = median_ms(lambda: a @ b, device, repeats=10)
    return 2 * size**3 / (ms / 1000) / 1e9


def ready_trainer(config, collects: int | None = None) -> Trainer:
    """A fresh agent's trainer with `collects` steps (default: enough for a batch) in replay."""
    trainer = Trainer(Agent.from_config(config))
    for _ in range(max(config.train.seq_len * 2, 300) if collects is None else collects):
        trainer.collect()
    return trainer


def step_parts(trainer: Trainer):
    """Closures for one world-model update and one actor-critic update on a fixed batch."""
    agent, cfg = trainer.agent, trainer.agent.config
    wm, ac, device = agent.world_model, agent.actor_critic, agent.device
    sample = trainer.replay.sample(cfg.train.batch, cfg.train.seq_len)
    batch = {k: torch.as_tensor(v, device=device) for k, v in sample.items()}
    params = list(wm.parameters())

    def world_model_update():
        loss, _, post = wm.loss(batch, trainer.generator)
        torch.autograd.grad(loss, params, allow_unused=True)
        return post.latent

    post = world_model_update()
    n = cfg.train.batch * cfg.train.seq_len
    starts = cfg.actor_critic.starts if 0 < cfg.actor_critic.starts < n else n
    start = Latent(post.deter.detach().flatten(0, 1)[:starts], post.code.detach().flatten(0, 1)[:starts])
    start_cont = torch.ones(starts, device=device)

    def imagine():
        return ac.imagine(wm, start, trainer.generator)

    def actor_critic_update():
        feats, actions = imagine()
        actor_loss, critic_loss, _, _ = ac.loss(wm, feats, actions, start_cont)
        torch.autograd.grad(actor_loss, list(ac.actor.parameters()), retain_graph=True)
        torch.autograd.grad(critic_loss, list(ac.critic.parameters()))

    return world_model_update, imagine, actor_critic_update, starts


def flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def acting_ms(agent: Agent, batch: int, device: torch.device) -> float:
    obs = np.zeros((batch, *agent.obs_shape), np.float32)
    state = agent.initial_state(batch)
    first = np.zeros(batch, bool)

    def act():
        nonlocal state
        _, state = agent.policy_step(obs, state, first, deterministic=False)

    return median_ms(act, device, repeats=200, warmup=10)


def end_to_end_sps(config, steps: int) -> float:
    """Env steps/s of `trainer.learn` at the train ratio, past the prefill: the updates that the prefill's
    steps are owed (a run makes them once, at its first training step) are counted as made, not timed."""
    trainer = ready_trainer(config, config.train.prefill)  # replay filled without training; then time both
    trainer.counters["updates"] = math.ceil(updates_due(config, trainer.counters["env_steps"]))
    start = time.perf_counter()
    trainer.learn(steps)
    return steps / (time.perf_counter() - start)


def profile(world_model_update, actor_critic_update, updates: int = 10, top: int = 15) -> list[dict]:
    """The operators that take the most self time over `updates` updates (PyTorch profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(updates):
            world_model_update()
            actor_critic_update()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {"op": e.key, "calls_per_update": e.count / updates,
         "self_ms_per_update": e.self_cpu_time_total / 1000 / updates, "share": e.self_cpu_time_total / total}
        for e in events[:top]
    ]  # fmt: skip


def make_preset_config(name: str, args: argparse.Namespace):
    overrides = parse_overrides(args.set + PRESET_EXTRA.get(name, []))
    return make_env_config(
        name,
        overrides,
        env_id=args.env,
        device=args.device,
        quantizer=args.quantizer,
        obs=args.obs,
        threads=args.threads,
    )


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    config = make_preset_config(name, args)
    config.train.eval_every = 0
    device = torch.device(args.device)
    trainer = ready_trainer(config)
    agent = trainer.agent
    world_model_update, imagine, actor_critic_update, starts = step_parts(trainer)
    wm_ms = median_ms(world_model_update, device, args.repeats)
    ac_ms = median_ms(actor_critic_update, device, args.repeats)
    imagine_ms = median_ms(imagine, device, args.repeats)
    # the step as training takes it: replay sampling, the world model's and `repeats` actor-critic gradient
    # steps with their optimiser steps (the parts above leave out all but one actor-critic step's gradients)
    trainer_update_ms = median_ms(trainer.update, device, args.repeats)
    update_flops = flops(world_model_update) + flops(actor_critic_update)
    imagined = starts * config.actor_critic.horizon
    return {
        "preset": name,
        "quantizer": config.quantizer,
        "batch": f"{config.train.batch}x{config.train.seq_len}",
        "imagination": f"{starts}x{config.actor_critic.horizon}",
        "parameters": {
            "world_model": sum(p.numel() for p in agent.world_model.parameters()),
            "actor": sum(p.numel() for p in agent.actor_critic.actor.parameters()),
            "critic": sum(p.numel() for p in agent.actor_critic.critic.parameters()),
        },
        "world_model_ms": wm_ms,
        "actor_critic_ms": ac_ms,
        "update_ms": wm_ms + ac_ms,  # the parts, one actor-critic step (older results too); whole: trainer_update_ms
        "actor_critic_repeats": config.actor_critic.repeats,
        "trainer_update_ms": trainer_update_ms,
        "update_gflop": update_flops / 1e9,
        "bf16": agent.world_model.bf16,
        "achieved_gflops": update_flops / ((wm_ms + ac_ms) / 1000) / 1e9,
        "imagined_steps_per_s": imagined / (imagine_ms / 1000),
        "acting_ms_batch1": acting_ms(agent, 1, device),
        "acting_ms_batch8": acting_ms(agent, 8, device),
        "end_to_end_env_steps_per_s": end_to_end_sps(config, args.e2e_steps) if args.e2e_steps else None,
        "replay_bytes_per_step": trainer.replay.bytes_per_step,
    }


def collection(env_id: str, obs_mode: str, counts: list[int], steps: int) -> list[dict]:
    """Env steps per second of a policy acting (no training) with N environments, sync and async."""
    agent = Agent.create(env_id, preset="tiny", obs=obs_mode)
    out = []
    for mode in ("sync", "async"):
        for n in counts:
            env = envs.make_vector(env_id, n, mode=mode, obs=obs_mode)
            obs, _ = env.reset(seed=0)
            state, first = agent.initial_state(n), np.ones(n, bool)
            start = time.perf_counter()
            for _ in range(steps // n):
                action, state = agent.policy_step(obs, state, first, deterministic=False)
                obs, _, term, trunc, _ = env.step(envs.to_env_action(action, agent.discrete))
                first = term | trunc
            rate = steps // n * n / (time.perf_counter() - start)
            out.append({"env": env_id, "obs": obs_mode, "mode": mode, "envs": n, "env_steps_per_s": rate})
            env.close()
    return out


# The sheeprl DreamerV3-XS layout: 32x32 codes, batch 16 x 64, imagination from all 1,024 states.
PRESET_EXTRA = {"xs": ["quantizer_options.groups=32", "quantizer_options.classes=32"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "default", "xs"], help="none: collection only")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--obs", default="state", choices=["state", "pixels"])
    parser.add_argument("--profile", action="store_true", help="profile one update of the first preset")
    parser.add_argument("--quantizer", default="categorical")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--e2e-steps", type=int, default=2000, help="env steps timed end to end (0: skip)")
    parser.add_argument("--collect-steps", type=int, default=4000, help="env steps per collection timing (0: skip)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()
    console = Console() if Console().is_terminal else Console(width=160)  # logs get the whole table
    device = torch.device(args.device)
    set_threads(args.threads)
    # bf16 without hardware support is emulated, slowly: not measured (None)
    peak = {
        "float32": matmul_gflops(device),
        "bfloat16": matmul_gflops(device, torch.bfloat16) if use_bf16("auto", device) else None,
    }
    threads = torch.get_num_threads()
    console.print(
        f"matmul throughput on {args.device} (2048x2048), GFLOP/s: "
        + ", ".join(f"{dtype} {'not native here' if v is None else f'{v:.0f}'}" for dtype, v in peak.items())
        + f"; torch threads {threads}"
    )
    results = []
    for name in args.presets:
        results.append(bench_preset(name, args))
        console.log(f"{name}: done")
    table = Table(title=f"{args.env} · {args.quantizer} · {args.device}")
    for column in ("preset", "params", "batch", "imagination", "WM ms", "AC ms", "update ms", "GFLOP", "GFLOP/s",
                   "imag. steps/s", "act ms (1 / 8)", "env steps/s", "replay B/step"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["preset"], f"{sum(r['parameters'].values()) / 1e6:.2f}M", r["batch"], r["imagination"],
            f"{r['world_model_ms']:.0f}", f"{r['actor_critic_ms']:.0f}",
            f"{r['trainer_update_ms']:.0f} ({r['actor_critic_repeats']} AC)", f"{r['update_gflop']:.1f}",
            f"{r['achieved_gflops']:.0f}{' (bf16)' if r['bf16'] else ''}", f"{r['imagined_steps_per_s']:,.0f}",
            f"{r['acting_ms_batch1']:.2f} / {r['acting_ms_batch8']:.2f}",
            f"{r['end_to_end_env_steps_per_s']:.1f}" if r["end_to_end_env_steps_per_s"] else "—",
            str(r["replay_bytes_per_step"]),
        )  # fmt: skip
    console.print(table)
    profiled = []
    if args.profile and args.presets:
        trainer = ready_trainer(make_preset_config(args.presets[0], args))
        world_model_update, _, actor_critic_update, _ = step_parts(trainer)
        profiled = profile(world_model_update, actor_critic_update)
        table = Table(title=f"top operators by self time, preset {args.presets[0]} (PyTorch profiler, 10 updates)")
        for column in ("operator", "calls / update", "ms / update", "share"):
            table.add_column(column, justify="right")
        for p in profiled:
            ms, share = f"{p['self_ms_per_update']:.1f}", f"{p['share']:.0%}"
            table.add_row(p["op"], f"{p['calls_per_update']:.0f}", ms, share)
        console.print(table)
    collected = collection(args.env, args.obs, [1, 2, 4, 8], args.collect_steps) if args.collect_steps else []
    if collected:
        table = Table(title=f"collection (policy acting, no training): {args.env} ({args.obs})")
        for column in ("mode", "envs", "env steps/s"):
            table.add_column(column, justify="right")
        for c in collected:
            table.add_row(c["mode"], str(c["envs"]), f"{c['env_steps_per_s']:,.0f}")
        console.print(table)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak resident memory: {peak_rss_mib:.0f} MiB")
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "commit": code_commit(),
               "matmul_gflops": peak, "presets": results, "collection": collected, "profile": profiled,
               "peak_rss_mib": peak_rss_mib, "torch_threads": threads}  # fmt: skip
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
