"""Sweeps: one teacher, one student per grid point."""

import json
import math

import numpy as np
import pytest

from test_study import SMALL
from test_study import STEPS
from test_study import kdtrain_run
from kdtrain import cli
from kdtrain import files
from kdtrain import options
from kdtrain import study_report
from kdtrain import sweep

# The first point (w = 1) trains the teacher in the same process as its
# student: its student is compared with a later point's.
GRID = ["--temperature", "1,4", "--ground-truth-weight", "1,0"]
NAMES = ["soft_targets-t1-w1", "soft_targets-t1-w0", "soft_targets-t4-w1",
         "soft_targets-t4-w0"]
_AT = SMALL.index("--generations")
POINT = SMALL[:_AT] + SMALL[_AT + 2:]  # a sweep has no generations


def test_the_grid_is_every_combination_in_order():
    points = sweep.make_grid(["kl", "dkd"], [None, 2.0], [0.0, 0.5])
    assert len(points) == 8
    assert points[0] == {"loss": "kl", "temperature": None,
                         "ground_truth_weight": 0.0}
    assert [sweep.point_name(p) for p in points[:3]] == [
        "kl-w0", "kl-w0.5", "kl-t2-w0"]


def test_sweep_flags_take_lists_and_check_every_point(tmp_path, capsys):
    _, settings = options.parse(["sweep", *GRID, "--loss", "kl,dkd"])
    assert settings.temperature == (1.0, 4.0)
    assert settings.ground_truth_weight == (1.0, 0.0)
    assert settings.loss == ("kl", "dkd")
    assert settings.directory.endswith("sweep-digits-wrn-16-1")
    config = tmp_path / "sweep.toml"
    config.write_text(options.config_text(settings))
    _, again = options.parse(["sweep", "--config", str(config)])
    assert again.identity() == settings.identity()
    assert cli.main(["sweep", "--loss", "kl,logits_mse", "--temperature",
                     "2"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--loss logits_mse has no temperature" in err
    assert "the point --loss logits_mse --temperature 2.0" in err
    assert cli.main(["sweep", "--ground-truth-weight", "0,1.5"]) == 2
    assert "--ground-truth-weight must be <= 1.0" in capsys.readouterr().err
    assert cli.main(["sweep", "--generations", "2"]) == cli.EXIT_USAGE
    assert "Unknown argument '--generations'" in capsys.readouterr().err
    assert cli.main(["sweep", "--ground-truth-weight",
                     "0.12345678901234,0.12345678901235"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--ground-truth-weight: The grid names two points alike" in err


@pytest.fixture(scope="module")
def cli_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    process = kdtrain_run(["sweep", *GRID, *POINT, "--directory", "grid"],
                          cwd)
    assert process.returncode == 0, process.stderr[-3000:]
    return cwd / "grid", process.stdout


def _weights(path):
    return files.load_model_file(str(path)).get_weights()


def test_one_teacher_teaches_every_point(cli_sweep):
    directory, out = cli_sweep
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == (
        sorted(NAMES))
    first = directory / NAMES[0]
    assert (first / "gen-0" / "model.keras").exists()
    teacher = str(first / "gen-0" / "model.keras")
    for name in NAMES[1:]:
        assert not (directory / name / "gen-0").exists()
        config = (directory / name / "config.toml").read_text()
        assert f'teacher = "{teacher}"' in config
    assert out.count("Training Teacher") == 1
    assert out.count("Caching the outputs") == 1  # once for the grid


def test_points_share_initial_weights_and_data_order(cli_sweep):
    directory, _ = cli_sweep
    # With w = 1 the loss is the labels' alone, whatever T: common random
    # numbers make the two students identical.
    same = [_weights(directory / n / "gen-1" / "model.keras")
            for n in ("soft_targets-t1-w1", "soft_targets-t4-w1")]
    for a, b in zip(*same):
        np.testing.assert_array_equal(a, b)
    other = [_weights(directory / n / "gen-1" / "model.keras")
             for n in ("soft_targets-t1-w0", "soft_targets-t4-w0")]
    assert not all(np.array_equal(a, b) for a, b in zip(*other))


def test_the_sweep_table_is_every_points_own(cli_sweep):
    directory, out = cli_sweep
    results = sweep.read_sweep(directory)
    assert results["grid"] == {"loss": ["soft_targets"],
                               "temperature": [1.0, 4.0],
                               "ground_truth_weight": [1.0, 0.0]}
    assert results["seeds"] == [0]
    for point in results["points"]:
        own = json.loads((directory / point["name"] / "results.json")
                         .read_text())
        assert point["runs"]["0"] == own["table"]
        student = [r for r in own["table"] if r["name"] == "gen-1"
                   and r["split"] == "test"][0]
        label = (f"| soft_targets, T={point['temperature']:g}, "
                 f"w={point['ground_truth_weight']:g} | "
                 f"{student['accuracy']:.4f} | n/a (1 seed) |")
        assert label in out


def test_report_draws_the_heatmap_of_the_grid(cli_sweep, capsys):
    directory, _ = cli_sweep
    assert cli.main(["report", str(directory)]) == cli.EXIT_OK
    assert (directory / "report.png").stat().st_size > 10_000
    results = sweep.read_sweep(directory)
    figure = study_report.draw_sweep(results)
    axis = figure.axes[0]
    image = np.asarray(axis.images[0].get_array())
    for point in results["points"]:
        row = [r for r in point["summary"] if r["name"] == "gen-1"][0]
        i = [1.0, 0.0].index(point["ground_truth_weight"])
        j = [1.0, 4.0].index(point["temperature"])
        assert image[i, j] == pytest.approx(
            row["metrics"]["accuracy"]["mean"])
    assert axis.get_xlabel() == "Temperature T"
    assert axis.get_ylabel() == "Ground-truth weight w"


def test_a_killed_sweep_resumes_without_retraining_finished_points(
    cli_sweep, tmp_path,
):
    argv = ["sweep", *GRID, *POINT, "--directory", "grid"]
    # The third point's first step: the first two took STEPS each.
    killed = kdtrain_run(argv, tmp_path,
                         fault=f"gen-1/train.step@{2 * STEPS + 1}")
    assert killed.returncode == -9
    finished = [tmp_path / "grid" / n / "gen-1" / "model.keras"
                for n in NAMES[:2]]
    stamps = [p.stat().st_mtime_ns for p in finished]
    rerun = kdtrain_run(argv, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    assert rerun.stdout.count("Training BAN-1") == 2
    mine = sweep.read_sweep(tmp_path / "grid")
    theirs = sweep.read_sweep(cli_sweep[0])
    for a, b in zip(mine["points"], theirs["points"]):
        for row_a, row_b in zip(a["runs"]["0"], b["runs"]["0"]):
            assert (row_a["name"], row_a["accuracy"], row_a["loss"]) == (
                row_b["name"], row_b["accuracy"], row_b["loss"])


def test_a_sweep_over_seeds_gives_intervals(tmp_path):
    process = kdtrain_run(["sweep", "--temperature", "2",
                           "--ground-truth-weight", "0,0.5", "--seeds",
                           "0,1", *POINT, "--directory", "grid"], tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    directory = tmp_path / "grid"
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == [
        "seed-0", "seed-1"]
    assert process.stdout.count("Training Teacher") == 2  # one per seed
    results = sweep.read_sweep(directory)
    point = results["points"][1]
    values = []
    for seed in (0, 1):
        own = files.read_json(directory / f"seed-{seed}" / point["name"]
                              / "results.json")
        values.append([r["accuracy"] for r in own["table"]
                       if r["name"] == "gen-1" and r["split"] == "test"][0])
    row = [r for r in point["summary"] if r["name"] == "gen-1"][0]
    half = 12.706204736174707 * np.std(values, ddof=1) / math.sqrt(2)
    assert row["metrics"]["accuracy"]["low"] == pytest.approx(
        np.mean(values) - half)
    assert "n/a (1 seed)" not in sweep.sweep_markdown(results)
    assert cli.main(["report", str(directory)]) == cli.EXIT_OK
    assert (directory / "report.png").exists()


def test_the_last_teacher_outputs_serve_only_their_teacher_and_samples():
    from kdtrain.cache import TeacherOutputCache
    from kdtrain.chain import training

    keys = np.array([b"a" * 16, b"b" * 16, b"c" * 16], dtype="S16")
    cache = TeacherOutputCache(np.zeros((3, 2)), "f" * 64, keys)
    training._RECENT[:] = [("logits", cache)]
    try:
        assert training._recent_cache("f" * 64, "logits", keys.copy()) is cache
        assert training._recent_cache("e" * 64, "logits", keys) is None
        assert training._recent_cache("f" * 64, "probabilities", keys) is None
        assert training._recent_cache("f" * 64, "logits", keys[::-1]) is None
        assert training._recent_cache("f" * 64, "logits", keys[:2]) is None
        assert training._recent_cache("f" * 64, "logits", None) is None
    finally:
        training._RECENT.clear()


def test_a_sweep_killed_writing_its_results_trains_nothing_again(
    cli_sweep, tmp_path,
):
    # A sweep of its own: its points name their teacher by absolute path.
    argv = ["sweep", *GRID, *POINT, "--directory", "grid"]
    killed = kdtrain_run(argv, tmp_path, fault="sweep/results.write")
    assert killed.returncode == -9
    assert not (tmp_path / "grid" / "results.json").exists()
    rerun = kdtrain_run(argv, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Training" not in rerun.stdout
    for mine, theirs in zip(sweep.read_sweep(tmp_path / "grid")["points"],
                            sweep.read_sweep(cli_sweep[0])["points"]):
        for row_a, row_b in zip(mine["runs"]["0"], theirs["runs"]["0"]):
            assert [row_a[k] for k in ("name", "split", "accuracy", "loss")] \
                == [row_b[k] for k in ("name", "split", "accuracy", "loss")]
    assert not [n for n in (tmp_path / "grid").iterdir() if ".tmp" in n.name]
