import json
import os
import subprocess
import sys

import pytest

from conftest import HANG_GUARD
from kdtrain import report

LABELS = {"teacher": "Teacher", "gen-1": "BAN-1", "gen-2": "BAN-2",
          "ensemble": "Ensemble", "ensemble_with_teacher": "Ensemble + teacher"}
TEST_ACCURACY = {"teacher": 0.951, "gen-1": 0.958, "gen-2": 0.962,
                 "ensemble": 0.966, "ensemble_with_teacher": 0.967}


def history(generation, epochs=3, validation=True):
    values = {
        "loss": [1.0 / (e + 1) for e in range(epochs)],
        "accuracy": [0.5 + 0.1 * e + 0.01 * generation for e in range(epochs)],
    }
    if validation:
        values["val_accuracy"] = [0.4 + 0.15 * e + 0.02 * generation
                                  for e in range(epochs)]
    return values


def write_run(directory, validation=True, given_teacher=False):
    """A finished run's results.json and records, as a chain writes them."""
    table, generations = [], {}
    for name, accuracy in TEST_ACCURACY.items():
        for split, shift in (("validation", -0.01), ("test", 0.0)):
            table.append({"name": name, "label": LABELS[name], "split": split,
                          "accuracy": accuracy + shift, "loss": 1 - accuracy,
                          "params": 1000, "wall_time": 1.0})
    first = 1 if given_teacher else 0
    for generation in range(first, 3):
        name = "teacher" if generation == 0 else f"gen-{generation}"
        record = {"generation": generation,
                  "history": history(generation, validation=validation)}
        generations[name] = record
        folder = directory / f"gen-{generation}"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(record))
    results = {"complete": True, "config": {}, "generations": generations,
               "table": table}
    (directory / "results.json").write_text(json.dumps(results))
    return results


def legend_texts(axis):
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_figure_compares_the_models_and_their_learning_curves(tmp_path):
    results = write_run(tmp_path)
    figure = report.draw(results["table"], report.read_histories(tmp_path))
    models, curves = figure.axes
    assert models.get_xlabel() == "Model"
    assert models.get_ylabel() == "Test accuracy"
    assert legend_texts(models) == ["Single model", "Ensemble"]
    assert [t.get_text() for t in models.get_xticklabels()] == list(
        LABELS.values()
    )
    single, ensembles = models.get_lines()
    assert list(single.get_xdata()) == [0, 1, 2]
    assert list(single.get_ydata()) == pytest.approx([0.951, 0.958, 0.962])
    assert list(ensembles.get_xdata()) == [3, 4]
    assert list(ensembles.get_ydata()) == pytest.approx([0.966, 0.967])
    assert single.get_color() != ensembles.get_color()
    # A 1.6-point spread on a 20-point axis, each value written out.
    assert models.get_ylim() == pytest.approx((0.8, 1.0))
    assert [t.get_text() for t in models.texts] == [
        "0.9510", "0.9580", "0.9620", "0.9660", "0.9670"
    ]
    assert curves.get_xlabel() == "Epoch"
    assert curves.get_ylabel() == "Validation accuracy"
    assert legend_texts(curves) == ["Teacher", "BAN-1", "BAN-2"]
    for generation, line in enumerate(curves.get_lines()):
        assert list(line.get_xdata()) == [1, 2, 3]
        assert list(line.get_ydata()) == pytest.approx(
            history(generation)["val_accuracy"]
        )


def test_figure_of_another_split_and_without_validation(tmp_path):
    results = write_run(tmp_path, validation=False, given_teacher=True)
    (tmp_path / "gen-2" / "record.json").unlink()  # results.json's copy
    histories = report.read_histories(tmp_path)
    assert list(histories) == ["gen-1", "gen-2"]
    figure = report.draw(results["table"], histories, split="validation")
    models, curves = figure.axes
    assert models.get_ylabel() == "Validation accuracy"
    assert list(models.get_lines()[0].get_ydata()) == pytest.approx(
        [0.941, 0.948, 0.952]
    )
    assert curves.get_ylabel() == "Training accuracy"
    assert legend_texts(curves) == ["BAN-1", "BAN-2"]
    assert list(curves.get_lines()[1].get_ydata()) == pytest.approx(
        history(2, validation=False)["accuracy"]
    )


@pytest.mark.parametrize("values, floor", [
    ([0.945, 0.96], 0.8), ([0.999], 0.8), ([0.52, 0.7], 0.4), ([0.04], 0.0),
])
def test_accuracy_axis_does_not_magnify_small_gaps(values, floor):
    assert report.accuracy_floor(values) == pytest.approx(floor)


def test_write_report_writes_markdown_and_png(tmp_path):
    write_run(tmp_path)
    markdown = report.write_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == markdown
    assert "| Metrics | Teacher | BAN-1 | BAN-2 | Ensemble |" in markdown
    assert "| Accuracy | 0.9510 | 0.9580 |" in markdown
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gen-0", "gen-1", "gen-2", "report.md", "report.png", "results.json"
    ]


def test_write_report_needs_a_table(tmp_path):
    with pytest.raises(ValueError, match="no finished run"):
        report.write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_reporting_never_starts_tensorflow(tmp_path):
    write_run(tmp_path)
    code = (
        "import sys\n"
        "import kdtrain.report\n"
        f"kdtrain.report.write_report({str(tmp_path)!r})\n"
        "loaded = {'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=HANG_GUARD, env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "report.png").is_file()
