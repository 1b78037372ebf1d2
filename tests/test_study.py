"""Studies: one chain per seed, summarized with t intervals."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import HANG_GUARD
from conftest import mlp
from conftest import run_without_tensorflow
import kdtrain
from kdtrain import cli
from kdtrain import options
from kdtrain import study
from kdtrain import study_report

T_975_2 = 4.302652729749464  # Student's t, 0.975 quantile, 2 df (tables)
T_975_1 = 12.706204736174707
SMALL = ["--train-size", "96", "--test-size", "64", "--epochs", "1",
         "--generations", "1", "--batch-size", "32", "--model", "wrn-10-1",
         "--no-progress", "--no-tensorboard", "--deterministic"]
STEPS = 3  # 96 samples in batches of 32: training steps per generation


def kdtrain_run(args, cwd, fault=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KDTRAIN_FAULT", None)
    if fault:
        env["KDTRAIN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "kdtrain", *args], cwd=cwd,
                          env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


# Summaries, without training ---------------------------------------------


def _table(teacher, student, loss=0.5):
    return [
        {"name": "teacher", "label": "Teacher", "split": "test",
         "accuracy": teacher, "loss": loss, "params": 10, "wall_time": 1.0},
        {"name": "gen-1", "label": "BAN-1", "split": "test",
         "accuracy": student, "loss": loss + 0.1, "params": 10,
         "wall_time": 2.0},
        {"name": "gen-1", "label": "BAN-1", "split": "validation",
         "accuracy": 0.0, "loss": 9.0, "params": 10, "wall_time": 2.0},
    ]


def test_summarize_gives_means_intervals_and_paired_differences():
    teachers, students = [0.90, 0.92, 0.91], [0.905, 0.924, 0.918]
    tables = {s: _table(t, u) for s, (t, u) in enumerate(zip(teachers,
                                                              students))}
    summary = study.summarize(tables)
    assert [row["name"] for row in summary] == ["teacher", "gen-1"]
    assert all(row["split"] == "test" for row in summary)
    student = summary[1]
    assert student["seeds"] == [0, 1, 2]
    assert set(student["metrics"]) == {"accuracy", "loss"}  # not params
    values = np.array(students)
    half = T_975_2 * values.std(ddof=1) / math.sqrt(3)
    accuracy_summary = student["metrics"]["accuracy"]
    assert accuracy_summary["mean"] == pytest.approx(values.mean())
    assert accuracy_summary["low"] == pytest.approx(values.mean() - half)
    assert accuracy_summary["high"] == pytest.approx(values.mean() + half)
    differences = values - np.array(teachers)
    paired = student["difference"]["accuracy"]
    half = T_975_2 * differences.std(ddof=1) / math.sqrt(3)
    assert paired["mean"] == pytest.approx(differences.mean())
    assert paired["low"] == pytest.approx(differences.mean() - half)
    assert summary[0]["difference"] == {}  # the baseline itself


def test_one_seed_prints_no_interval():
    summary = study.summarize({4: _table(0.9, 0.91)})
    text = study.markdown_summary(summary)
    assert "n/a (1 seed)" in text
    assert "±" not in text.split("\n", 2)[2]  # the rows: no spread
    assert "one seed, no interval" in study.conclusion(summary)


def test_the_conclusion_follows_the_intervals():
    better = study.summarize({s: _table(0.90 + d, 0.91 + 1.2 * d) for s, d
                              in enumerate([0.0, 0.01, 0.02])})
    assert "better than the teacher" in study.conclusion(better)
    worse = study.summarize({s: _table(0.90 + d, 0.89 + 1.2 * d) for s, d
                             in enumerate([0.0, 0.01, 0.02])})
    assert "worse than the teacher" in study.conclusion(worse)
    noisy = study.summarize({0: _table(0.9, 0.91), 1: _table(0.9, 0.88),
                             2: _table(0.9, 0.905)})
    assert "no detectable difference" in study.conclusion(noisy)


def test_a_loss_above_the_teachers_is_not_called_better():
    higher = study.summarize({s: _table(0.9, 0.9, loss=0.3 + d) for s, d in
                              enumerate([0.0, 0.01, 0.03])})
    said = study.conclusion(higher, "loss", baseline="the baseline")
    assert "higher than the baseline" in said and "better" not in said


def test_the_same_difference_on_every_seed_gives_no_verdict():
    # Accuracies move in steps of one test sample: two seeds may agree.
    same = study.summarize({0: _table(0.90, 0.91), 1: _table(0.92, 0.93)})
    said = study.conclusion(same)
    assert "every seed gave the same difference" in said
    assert "better" not in said


@pytest.mark.parametrize("seeds, message", [
    ([], "at least one"), ([0, 0], "lists a seed twice"),
    ([-1], "integers >= 0"), ("012", "must be a list"), ([True], ">= 0"),
])
def test_bad_seeds_are_refused(seeds, message):
    with pytest.raises(ValueError, match=message):
        study.check_seeds(seeds)


def test_a_single_run_or_foreign_files_are_not_a_study(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a single run"):
        study.check_directory(str(tmp_path))
    (tmp_path / "run.json").unlink()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        study.check_directory(str(tmp_path))


# Options -----------------------------------------------------------------------


def test_seeds_parse_from_flags_and_toml_lists(tmp_path):
    _, settings = options.parse(["ban", "--seeds", "2, 0,5"])
    assert settings.seeds == (2, 0, 5)
    assert settings.directory.endswith("ban-digits-wrn-16-1-study")
    config = tmp_path / "study.toml"
    config.write_text('command = "ban"\nseeds = [1, 3]\n')
    _, settings = options.parse(["ban", "--config", str(config)])
    assert settings.seeds == (1, 3)
    text = options.config_text(settings)
    assert "seeds = [1, 3]" in text and "\nseed =" not in text
    assert "seeds" not in settings.identity()  # a study may add seeds


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,x"], "--seeds must be int. Received: 'x' (in --seeds"),
    (["--seeds", "0,1,0"], "--seeds lists a value twice"),
    (["--seeds", "0,-2"], "--seeds must be >= 0. Received: -2"),
    (["--seeds", "0,,1"], "--seeds takes a comma-separated list"),
    (["--seeds", "0,1", "--seed", "4"], "drop --seed 4"),
    (["--seeds", "0,1", "--retrain-from", "1"],
     "retrain a seed's run in its own directory"),
])
def test_bad_seeds_flags_exit_2_naming_the_flag(argv, message, capsys):
    assert cli.main(["ban", *argv]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


# The Python API ------------------------------------------------------------------


def test_run_seeds_runs_a_chain_per_seed_and_summarizes_them(digits,
                                                             tmp_path):
    x, y = digits
    runner = kdtrain.GenerationRunner(
        lambda: mlp(12, seed=None), generations=1, directory=tmp_path / "s",
        verbose=0, tensorboard=False, progress=False, deterministic=True,
        seed=0,
    )
    arguments = dict(test_data=(x[1400:], y[1400:]), epochs=1,
                     batch_size=64)
    result = runner.run_seeds([3, 7, 11], (x[:600], y[:600]), **arguments)
    assert result.seeds == [3, 7, 11] and result.split == "test"
    accuracies = {name: [] for name in ("teacher", "gen-1")}
    for seed, chain in result.results.items():
        assert chain.config["seed"] == seed
        assert chain.directory == str(tmp_path / "s" / f"seed-{seed}")
        for name, model in zip(chain.names, chain.models):
            # The table's numbers are the saved models' own.
            value = accuracy(model, x[1400:], y[1400:])
            assert chain.row(name)["accuracy"] == pytest.approx(value)
            accuracies[name].append(value)
    first, second = (r.models[0].get_weights()[0] for r in list(
        result.results.values())[:2])
    assert not np.allclose(first, second)  # each seed its own chain
    values = np.array(accuracies["gen-1"])
    row = result.row("gen-1")
    assert row["metrics"]["accuracy"]["mean"] == pytest.approx(values.mean())
    half = T_975_2 * values.std(ddof=1) / math.sqrt(3)
    assert row["metrics"]["accuracy"]["high"] == pytest.approx(
        values.mean() + half)
    differences = values - np.array(accuracies["teacher"])
    assert row["difference"]["accuracy"]["values"] == pytest.approx(
        list(differences))
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["kind"] == "study" and saved["seeds"] == [3, 7, 11]
    assert saved["summary"] == result.summary
    assert "| BAN-1 |" in result.to_markdown()

    # Again: every seed is loaded, none trained.
    models = sorted((tmp_path / "s").glob("seed-*/gen-*/model.keras"))
    stamps = [path.stat().st_mtime_ns for path in models]
    again = runner.run_seeds([3, 7, 11], (x[:600], y[:600]), **arguments)
    assert [path.stat().st_mtime_ns for path in models] == stamps
    assert again.summary == result.summary


# The command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory):
    """`kdtrain ban --seeds 0,1` with tiny settings, uninterrupted."""
    cwd = tmp_path_factory.mktemp("study")
    process = kdtrain_run(["ban", "--seeds", "0,1", *SMALL, "--directory",
                           "study"], cwd)
    assert process.returncode == 0, process.stderr[-3000:]
    return cwd / "study", process.stdout


def _study_values(directory):
    results = json.loads((directory / "results.json").read_text())
    return {seed: [(r["name"], r["split"], r["accuracy"], r["loss"])
                   for r in run["table"]]
            for seed, run in results["runs"].items()}


def test_the_command_line_study_prints_intervals_and_keeps_each_run(
    cli_study,
):
    directory, out = cli_study
    assert "Test split, 2 seeds (0, 1)" in out
    assert "| Model | Accuracy (mean ± sd) | 95% CI |" in out
    results = json.loads((directory / "results.json").read_text())
    for seed in (0, 1):
        config = (directory / f"seed-{seed}" / "config.toml").read_text()
        assert f"\nseed = {seed}\n" in config and "seeds" not in config
        run = json.loads((directory / f"seed-{seed}" / "results.json")
                         .read_text())
        assert results["runs"][str(seed)]["table"] == run["table"]
    study_config = (directory / "config.toml").read_text()
    assert "seeds = [0, 1]" in study_config and "\nseed =" not in study_config
    teacher = [r for r in results["summary"] if r["name"] == "teacher"][0]
    values = teacher["metrics"]["accuracy"]["values"]
    half = T_975_1 * np.std(values, ddof=1) / math.sqrt(2)
    assert teacher["metrics"]["accuracy"]["high"] == pytest.approx(
        np.mean(values) + half)
    assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in out


def test_a_finished_study_answers_without_tensorflow(cli_study):
    directory, out = cli_study
    code, loaded, stdout, stderr = run_without_tensorflow(
        ["ban", "--seeds", "0,1", *SMALL, "--directory", str(directory)],
        directory.parent)
    assert code == 0, stderr
    assert not loaded
    table = out[out.index("| Model"):].split("\n\n")[0]
    assert table in stdout


def test_report_draws_error_bars_from_the_intervals(cli_study, capsys):
    directory, _ = cli_study
    code, loaded, _, stderr = run_without_tensorflow(["report",
                                                     str(directory)])
    assert code == cli.EXIT_OK, stderr
    assert not loaded  # a study's report needs no TensorFlow
    assert (directory / "report.png").stat().st_size > 10_000
    assert "95% CI" in (directory / "report.md").read_text()
    results = study.read_study(directory)
    figure = study_report.draw_study(results)
    values_axis, difference_axis = figure.axes
    assert values_axis.get_ylabel() == "Test accuracy"
    bars = [c for c in values_axis.containers]
    assert len(bars) == len(results["summary"])
    for container, row in zip(bars, results["summary"]):
        summary = row["metrics"]["accuracy"]
        (segment,) = container.lines[2][0].get_segments()
        assert segment[0][1] == pytest.approx(summary["low"])
        assert segment[1][1] == pytest.approx(summary["high"])
    assert len(difference_axis.containers) == len(results["summary"]) - 1
    labels = [t.get_text() for t in values_axis.get_legend().get_texts()]
    assert "One seed" in labels


def test_evaluate_and_export_of_a_study_point_to_its_runs(cli_study,
                                                          capsys):
    directory, _ = cli_study
    assert cli.main(["evaluate", str(directory)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "seed-0, seed-1" in err and f"kdtrain report {directory}" in err
    assert cli.main(["export", str(directory), "--output", "m.onnx",
                     "--format", "onnx"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"kdtrain export {directory / 'seed-0'}" in err


def test_a_summary_of_changed_runs_is_refused_until_rerun(cli_study,
                                                         tmp_path, capsys):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(cli_study[0], copy)
    for name in ("report.md", "report.png"):  # another test's report
        (copy / name).unlink(missing_ok=True)
    # Seed 1 retrained on its own since the study summarized it.
    run = copy / "seed-1" / "results.json"
    results = json.loads(run.read_text())
    results["table"][0]["accuracy"] += 0.25
    run.write_text(json.dumps(results))
    assert cli.main(["report", str(copy)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no longer matches its runs (seed-1 changed since)" in err
    assert not (copy / "report.md").exists()


def test_a_killed_study_resumes_without_retraining_finished_seeds(
    cli_study, tmp_path,
):
    uninterrupted, _ = cli_study
    argv = ["ban", "--seeds", "0,1", *SMALL, "--directory", "study"]
    # Killed at seed 1's first student step: seed 0's gen-1 took STEPS.
    killed = kdtrain_run(argv, tmp_path, fault=f"gen-1/train.step@{STEPS + 1}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = tmp_path / "study" / "seed-0" / "gen-1" / "model.keras"
    stamp = finished.stat().st_mtime_ns
    assert not (tmp_path / "study" / "results.json").exists()
    rerun = kdtrain_run(argv, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert finished.stat().st_mtime_ns == stamp
    assert rerun.stdout.count("Training BAN-1") == 1  # seed 1's only
    assert _study_values(tmp_path / "study") == _study_values(uninterrupted)


def test_a_study_killed_writing_its_results_trains_nothing_again(
    cli_study, tmp_path,
):
    uninterrupted, _ = cli_study
    argv = ["ban", "--seeds", "0,1", *SMALL, "--directory", "study"]
    killed = kdtrain_run(argv, tmp_path, fault="study/results.write")
    assert killed.returncode == -9
    assert not (tmp_path / "study" / "results.json").exists()
    rerun = kdtrain_run(argv, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Training" not in rerun.stdout
    assert _study_values(tmp_path / "study") == _study_values(uninterrupted)
    assert not [n for n in os.listdir(tmp_path / "study") if ".tmp" in n]


def test_more_seeds_train_only_the_new_ones(cli_study, tmp_path):
    import shutil

    shutil.copytree(cli_study[0], tmp_path / "study")
    argv = ["ban", "--seeds", "0,1,2", *SMALL, "--directory", "study"]
    # Killed in the new seed: the old summary is gone, not left standing.
    killed = kdtrain_run(argv, tmp_path, fault="gen-0/train.step@1")
    assert killed.returncode == -9
    assert not (tmp_path / "study" / "results.json").exists()
    process = kdtrain_run(argv, tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.count("Training Teacher") == 1
    results = study.read_study(tmp_path / "study")
    assert results["seeds"] == [0, 1, 2]
    assert {k: v for k, v in _study_values(tmp_path / "study").items()
            if k != "2"} == _study_values(cli_study[0])


def test_run_seeds_with_a_distilled_ensemble_summarizes_its_column(
    digits, tmp_path,
):
    x, y = digits
    runner = kdtrain.GenerationRunner(
        lambda: mlp(12, seed=None), generations=2, distill_ensemble=True,
        verbose=0, tensorboard=False, progress=False,
    )
    result = runner.run_seeds([0, 1], (x[:400], y[:400]),
                              test_data=(x[1400:], y[1400:]), epochs=1,
                              batch_size=64)
    row = result.row("gen-ensemble")
    assert row["label"] == "Ensemble-distilled"
    values = [result.results[s].distilled_ensemble for s in (0, 1)]
    expected = [accuracy(m, x[1400:], y[1400:]) for m in values]
    assert row["metrics"]["accuracy"]["values"] == pytest.approx(expected)
    assert result.directory is None


def test_a_study_refuses_a_directory_that_holds_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    code = cli.main(["ban", "--seeds", "0,1", *SMALL, "--directory",
                     str(tmp_path / "run")])
    assert code == cli.EXIT_USAGE
    assert "holds a single run" in capsys.readouterr().err
    assert os.listdir(tmp_path / "run") == ["run.json"]
    keras.backend.clear_session()


def test_distill_with_seeds_labels_its_models(tmp_path):
    at = SMALL.index("--generations")
    argv = SMALL[:at] + SMALL[at + 2:]  # distill trains one student
    process = kdtrain_run(["distill", "--seeds", "0,1", "--teacher-model",
                           "wrn-10-2", *argv, "--directory", "d"], tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| Teacher (wrn-10-2) |" in process.stdout
    assert "| Student (wrn-10-1) |" in process.stdout
    config = (tmp_path / "d" / "config.toml").read_text()
    assert 'command = "distill"' in config and "seeds = [0, 1]" in config
    # The study's tables carry the command's labels; its runs' do not.
    code, _, stdout, stderr = run_without_tensorflow(["report", "d"],
                                                     tmp_path)
    assert code == cli.EXIT_OK, stderr
    assert "| Student (wrn-10-1) |" in stdout


def test_run_seeds_refuses_retrain_from(tmp_path):
    runner = kdtrain.GenerationRunner(lambda: mlp(4, seed=None),
                                      generations=1, retrain_from=1,
                                      directory=tmp_path / "s")
    with pytest.raises(ValueError, match="Retrain the seed's run in its own"):
        runner.run_seeds([0, 1], (np.zeros((8, 64)), np.zeros(8)))
    assert not (tmp_path / "s").exists()


def test_the_loss_comparison_experiment_runs_and_pairs_its_rows(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "compare_losses.py")
    process = subprocess.run(
        [sys.executable, script, "--dataset", "digits", "--train-size",
         "96", "--test-size", "64", "--validation-split", "0.1", "--epochs",
         "1", "--batch-size", "32", "--seeds", "0", "--teacher-model",
         "wrn-10-1", "--model", "wrn-10-1", "--directory", "cmp"],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    table = results["tables"]["0"]
    assert [r["name"] for r in table] == [
        "teacher", "soft_targets", "kl", "kl_standardized", "dkd", "dist",
        "nkd", "ensemble_of_two", "distilled_ensemble"]
    baseline = table[1]["accuracy"]
    for row in results["summary"][2:]:
        own = [r for r in table if r["name"] == row["name"]][0]["accuracy"]
        assert row["difference"]["accuracy"]["mean"] == pytest.approx(
            own - baseline)
    assert "Δ vs soft targets (paired)" in process.stdout
