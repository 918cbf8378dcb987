"""Reading run folders (agent runs), comparing groups of runs (agent compare, agent plot), TensorBoard."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from agent import Trainer
from agent.analysis import compare
from agent.runs import RunFolder, find_runs, read_run, read_runs
from cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def group_of_runs(tmp_path_factory):
    """Two quantizers x two seeds of short tiny runs, trained here (no Ray)."""
    folder = tmp_path_factory.mktemp("runs")
    for quantizer in ("categorical", "round"):
        for seed in (0, 1):
            run = folder / f"{quantizer}-{seed}"
            config = {"seed": seed, "train": {"steps": 150, "eval_every": 50}}
            with Trainer.create("CartPole-v1", quantizer=quantizer, preset="tiny", run_dir=run, **config) as trainer:
                trainer.learn()
    return folder


def test_runs_lists_state_progress_and_evaluations(group_of_runs, tmp_path, monkeypatch):
    result = runner.invoke(app, ["runs", str(group_of_runs), "--json"])
    rows = json.loads(result.output)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"finished"}
    assert all(row["env_steps"] == row["total_steps"] == 150 and row["best_eval"] is not None for row in rows)
    assert {(row["quantizer"], row["seed"]) for row in rows} == {
        (q, s) for q in ("categorical", "round") for s in (0, 1)
    }
    monkeypatch.setattr(cli.console, "width", 200)  # a terminal wide enough for whole names
    table = runner.invoke(app, ["runs", str(group_of_runs)]).output
    assert "│ round-0 " in table and str(group_of_runs / "round-0") not in table  # named under the folder
    copy = tmp_path / "copy"
    shutil.copytree(group_of_runs / "round-0", copy, ignore=shutil.ignore_patterns(".lock"))
    with RunFolder(copy, new=False):
        assert read_run(copy).status == "running"
    assert read_run(copy).status == "finished"


def test_corrupt_metrics_and_configs_are_read_or_named_never_a_traceback(group_of_runs, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(group_of_runs, folder)
    with open(folder / "round-0" / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n{"step": 7, "eval_return_mean": "x"}\n{"ste')  # not lines of this project
    (folder / "round-1" / "config.json").write_text(json.dumps({"seed": 1}))  # no env_id, no train.steps
    config = json.loads((folder / "categorical-1" / "config.json").read_text())
    config["train"]["steps"] = 1000  # 150 of 1,000 env steps: interrupted
    (folder / "categorical-1" / "config.json").write_text(json.dumps(config))
    infos, unreadable = read_runs([folder])
    assert len(infos) == 3 and [path.name for path, _ in unreadable] == ["round-1"]
    assert read_run(folder / "round-0").curve()[0][-1] == 150  # the lines before the bad one still count
    result = runner.invoke(app, ["runs", str(folder), "--json"])
    assert result.exit_code == 0 and [row["status"] for row in json.loads(result.output)].count("unreadable") == 1
    result = runner.invoke(app, ["compare", str(folder), "--reps", "100"], terminal_width=200)
    assert result.exit_code == 0 and "warning: left out" in result.output and "Traceback" not in result.output
    assert "left out 1 unfinished runs: categorical-1" in result.output
    result = runner.invoke(app, ["compare", str(folder), "--metric", "nothing"])
    assert result.exit_code == 2 and "no finished run has any 'nothing'" in result.output


def write_run(folder: Path, quantizer: str, seed: int, curve: list[tuple[int, float]], total: int = 2000) -> None:
    """A run folder with a config and evaluation lines only (no checkpoint: the test sets its status)."""
    folder.mkdir(parents=True)
    config = {"env_id": "CartPole-v1", "quantizer": quantizer, "seed": seed, "train": {"steps": total}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [{"step": s, "eval_return_mean": v, "eval_return_best": v} for s, v in curve]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_compare_matches_a_hand_computation_over_finished_runs(tmp_path, monkeypatch):
    finals = {"a": [10.0, 20.0, 30.0, 40.0], "b": [5.0, 5.0, 5.0, 100.0]}
    for group, values in finals.items():
        for seed, final in enumerate(values):
            middle = -20.0 if (group, seed) == ("b", 3) else final / 2  # a late learner: its area is small
            write_run(tmp_path / f"{group}{seed}", group, seed, [(0, 0.0), (1000, middle), (2000, final)])
    write_run(tmp_path / "a9", "a", 9, [(0, 0.0), (1000, 900.0)])  # unfinished: its last value is not final
    infos = [read_run(p) for p in find_runs([tmp_path])]
    for info in infos:
        info.status = "finished" if info.path.name != "a9" else "interrupted"
    report = compare(infos, threshold=15.0, reps=500)
    assert report["left_out_unfinished"] == [str(tmp_path / "a9")]
    rows = report["envs"]["CartPole-v1"]["groups"]
    assert rows["a"]["seeds"] == 4 and rows["a"]["final_mean"] == 25.0 and rows["a"]["final_iqm"] == 25.0  # 20, 30
    assert rows["b"]["final_mean"] == pytest.approx(28.75) and rows["b"]["final_iqm"] == 5.0  # the middle two: 5, 5
    # each curve's mean over env steps: (0 + f/2)/2 * 1000 + (f/2 + f)/2 * 1000 over 2000 = f/2; b3's
    # ((0 - 20)/2 + (-20 + 100)/2) * 1000 / 2000 = 15
    assert rows["a"]["auc_mean"] == pytest.approx(12.5) and rows["b"]["auc_mean"] == pytest.approx(5.625)
    assert rows["a"]["reached"] == 3 and rows["a"]["median_steps_of_those_reaching"] == 1000.0  # 2k; 1k, 1k
    low, high = rows["b"]["final_iqm_ci"]
    assert low <= 5.0 <= high
    # P(a > b): 10 beats three 5s, loses to 100; 20, 30, 40 likewise: 12 of 16 pairs
    improvement = report["envs"]["CartPole-v1"]["probability_of_improvement"]
    assert list(improvement) == ["a > b"] and improvement["a > b"]["p"] == 0.75  # P(b > a) is 1 minus it
    # areas: a 5, 10, 15, 20; b 2.5, 2.5, 2.5, 15: 3 + 3 + 3.5 (a tie counts half) + 4 of 16 pairs
    assert improvement["a > b"]["auc_p"] == pytest.approx(13.5 / 16)
    low, high = improvement["a > b"]["auc_ci"]
    assert 0 <= low <= 13.5 / 16 <= high <= 1


def test_plot_writes_a_png_and_draws_in_the_terminal(group_of_runs, tmp_path):
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(group_of_runs), "--out", str(out), "--stat", "mean"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["plot", str(group_of_runs), "--terminal"], terminal_width=150)
    assert result.exit_code == 0 and "categorical (n=2)" in result.output and "round (n=2)" in result.output
    result = runner.invoke(app, ["plot", str(group_of_runs), "--out", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "plots are written as .png" in result.output


def test_the_curves_figure_has_a_line_and_band_per_group():
    from agent.analysis import aggregate_groups
    from agent.plots import curves_figure

    curves = {"CartPole-v1": {"a": [(np.array([0, 10]), np.array([0.0, 1.0]))] * 3,
                              "b": [(np.array([0, 10]), np.array([1.0, 2.0]))] * 2}}  # fmt: skip
    figure = curves_figure(aggregate_groups(curves, "iqm", reps=50), "return", "by quantizer")
    (ax,) = figure.get_axes()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n=3)", "b (n=2)"]
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2 and ax.get_xlabel() == "env steps"


def test_a_group_keeps_its_colour_in_a_panel_where_another_group_has_no_runs():
    from agent.analysis import aggregate_groups
    from agent.plots import curves_figure

    run = (np.array([0, 10]), np.array([0.0, 1.0]))
    curves = {"Breakout": {"agent": [run], "DQN": [run]}, "Seaquest": {"DQN": [run]}}
    first, second = curves_figure(aggregate_groups(curves, "mean"), "return", "suite").get_axes()
    dqn_first = [line for line in first.get_lines() if line.get_label().startswith("DQN")]
    assert dqn_first[0].get_color() == second.get_lines()[0].get_color() != first.get_lines()[0].get_color()


def test_tensorboard_scalars_continue_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    config = {"train": {"steps": 300, "log_every": 50, "checkpoint_every": 100, "tensorboard": True}}

    def crash_after_250(line):
        if line["step"] == 250:
            raise RuntimeError("crash")  # after the line at 250 is written, before a checkpoint

    with (
        Trainer.create("CartPole-v1", preset="tiny", run_dir=run, **config) as trainer,
        pytest.raises(RuntimeError, match="crash"),
    ):
        trainer.learn(on_log=crash_after_250)
    with Trainer.resume(run) as trainer:  # from the checkpoint at 200: 250 is logged again
        assert trainer.counters["env_steps"] == 200
        trainer.learn()
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    steps = [event.step for event in events.Scalars("updates")]
    assert steps == [50, 100, 150, 200, 250, 300]  # 200 kept (the checkpoint's), 250 once
    assert np.isfinite([event.value for event in events.Scalars("time/sps")]).all()
