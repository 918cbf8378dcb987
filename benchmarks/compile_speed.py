"""What torch.compile would buy a whole update: milliseconds per `trainer.update()` eager, then with the
world-model loss, the imagined rollout and the actor-critic loss each compiled (inductor, static shapes),
and the seconds the first compiled updates take (tracing and code generation).

The compiled parts draw their samples from torch's global generator: the trainer's own `torch.Generator`
breaks dynamo's graph, so a compiled agent would need its randomness drawn up front (the "Fast" issue's
lever). This measures what that would be worth before anyone builds it; the agent itself does not compile.

Inductor caches what it generated (`--cache-dir`, a fresh temporary folder unless given, so by default the
compile time is a first run's); run twice with the same `--cache-dir` for a later run's.

    python benchmarks/compile_speed.py --env CartPole-v1 --parts world_model
    python benchmarks/compile_speed.py --env MinAtar/Breakout-v1 --parts world_model imagine actor_critic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from update_speed import update_times  # benchmarks/

PARTS = ("world_model", "imagine", "actor_critic")


def update_ms(trainer, repeats: int, warmup: int) -> float:
    return statistics.median(update_times(trainer, repeats, warmup))


def compile_parts(trainer, parts: list[str]) -> None:
    """Swap the agent's methods for compiled ones that take no generator (see the module's docstring)."""
    import torch

    wm, ac = trainer.agent.world_model, trainer.agent.actor_critic
    if "world_model" in parts:
        loss = torch.compile(lambda batch, _eager=wm.loss: _eager(batch, None), dynamic=False)
        wm.loss = lambda batch, generator=None: loss(batch)
    if "imagine" in parts:
        imagine = torch.compile(lambda model, start, _eager=ac.imagine: _eager(model, start, None), dynamic=False)
        ac.imagine = lambda model, start, generator=None: imagine(model, start)
    if "actor_critic" in parts:
        ac.loss = torch.compile(ac.loss, dynamic=False)


def eager_parts(trainer) -> None:
    """Undo `compile_parts`: the classes' own (eager) methods again."""
    wm, ac = trainer.agent.world_model, trainer.agent.actor_critic
    for module, name in ((wm, "loss"), (ac, "imagine"), (ac, "loss")):
        module.__dict__.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)  # a fresh process's first updates run slow
    parser.add_argument("--cache-dir", type=Path, help="inductor's cache (default: a fresh temporary folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from learning import code_commit  # benchmarks/
    from rich import print as rich_print

    from agent.checkpoint import atomic_write_text
    from agent.runs import safe_name

    commit = code_commit()  # before measuring, as learning.py: the checkout may move meanwhile
    with tempfile.TemporaryDirectory() as fresh:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_dir or fresh)  # read when inductor compiles
        result = measure(args)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "commit": commit, **result}
    rich_print(result)
    out = args.out or Path(f"benchmarks/results/compile-speed-{safe_name(args.env)}-{'+'.join(args.parts)}.json")
    atomic_write_text(out, json.dumps(payload, indent=1))
    print(f"wrote {out}")


def measure(args: argparse.Namespace) -> dict:
    from speed import ready_trainer  # benchmarks/

    from agent.agent import make_env_config
    from agent.trainer import set_threads

    set_threads(args.threads)
    config = make_env_config("default", {"train.eval_every": 0}, env_id=args.env, threads=args.threads)
    trainer = ready_trainer(config)
    eager = update_ms(trainer, args.repeats, args.warmup)
    compile_parts(trainer, args.parts)
    start = time.perf_counter()
    for _ in range(2):  # a recompile that the first compiled update's changes cause is counted here, not timed
        trainer.update()
    compile_s = time.perf_counter() - start
    compiled = update_ms(trainer, args.repeats, args.warmup)
    eager_parts(trainer)
    eager_after = update_ms(trainer, args.repeats, args.warmup)  # eager on both sides of the compiled: drift shows
    return {"env_id": args.env, "parts": args.parts, "threads": args.threads, "eager_ms": [eager, eager_after],
            "compiled_ms": compiled, "speedup": (eager + eager_after) / 2 / compiled, "first_two_updates_s": compile_s,
            "cache": "given" if args.cache_dir else "fresh"}  # fmt: skip


if __name__ == "__main__":
    main()
