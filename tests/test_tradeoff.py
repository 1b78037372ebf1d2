import json
import os
import shutil
import subprocess
import sys

import keras
import pytest

from conftest import HANG_GUARD
from kdtrain import cli
from kdtrain import files
from kdtrain import report
from kdtrain import tradeoff
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.macs import count_macs
from kdtrain.models import WideResNet
from test_report import LABELS
from test_report import write_run

L = keras.layers


def sequential(*layers, shape=(8, 8, 1)):
    return keras.Sequential([keras.Input(shape), *layers])


# Multiply-accumulates, against counts by hand --------------------------------


@pytest.mark.parametrize("layers, shape, macs", [
    # 8x8 outputs of a 3x3x1 kernel with 4 filters; 256 features x 10 units.
    ([L.Conv2D(4, 3, padding="same"), L.Flatten(), L.Dense(10)], (8, 8, 1),
     8 * 8 * 3 * 3 * 1 * 4 + 256 * 10),
    # Stride 2, valid: 3x3 outputs of a 3x3x2 kernel with 5 filters.
    ([L.Conv2D(5, 3, strides=2)], (8, 8, 2), 3 * 3 * (3 * 3 * 2 * 5)),
    # Two groups of 2 of 4 input channels, 6 filters: 8x8 x 3x3x2x6.
    ([L.Conv2D(6, 3, padding="same", groups=2)], (8, 8, 4),
     8 * 8 * 3 * 3 * 2 * 6),
    # Depthwise, multiplier 2 on 3 channels: 6x6 x 3x3x3x2.
    ([L.DepthwiseConv2D(3, depth_multiplier=2)], (8, 8, 3),
     6 * 6 * 3 * 3 * 3 * 2),
    # Separable: depthwise 8x8x(3x3x3) plus pointwise 8x8x(3x7).
    ([L.SeparableConv2D(7, 3, padding="same")], (8, 8, 3),
     8 * 8 * 3 * 3 * 3 + 8 * 8 * 3 * 7),
    # Transposed, from 4x4 inputs: 4x4 x 3x3x(5 filters x 2 channels).
    ([L.Conv2DTranspose(5, 3, strides=2, padding="same")], (4, 4, 2),
     4 * 4 * 3 * 3 * 5 * 2),
    # Conv1D: 10 positions x 3 taps x 4 channels x 8 filters.
    ([L.Conv1D(8, 3, padding="same")], (10, 4), 10 * 3 * 4 * 8),
    # Dense on every step of a sequence: 5 steps x 4 x 3.
    ([L.Dense(3)], (5, 4), 5 * 4 * 3),
    # Batch normalization: one per element; pooling, ReLU: none.
    ([L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(), L.Flatten(),
      L.Dense(2)], (8, 8, 3), 8 * 8 * 3 + 4 * 4 * 3 * 2),
])
def test_macs_of_each_layer_kind(layers, shape, macs):
    assert count_macs(sequential(*layers, shape=shape)) == macs


def test_macs_of_nested_models_ensembles_and_a_wide_resnet():
    inner = sequential(L.Conv2D(4, 3, padding="same"), L.Flatten())
    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, L.Dense(10)(inner(inputs)))
    assert count_macs(outer) == 8 * 8 * 9 * 4 + 256 * 10
    two = GenerationEnsemble([outer, sequential(L.Flatten(), L.Dense(10))])
    assert count_macs(two) == 8 * 8 * 9 * 4 + 256 * 10 + 64 * 10
    # WRN-10-1 on 8x8x1: a stem, three groups of one block, BN, a head.
    convs = (8 * 8 * 9 * 1 * 16                                  # stem
             + 2 * 8 * 8 * 9 * 16 * 16                           # group 1
             + 4 * 4 * (9 * 16 * 32 + 16 * 32 + 9 * 32 * 32)     # group 2
             + 2 * 2 * (9 * 32 * 64 + 32 * 64 + 9 * 64 * 64))   # group 3
    norms = (8 * 8 * 16 * 3 + 4 * 4 * 32 * 2 + 2 * 2 * 64 * 2)
    model = WideResNet(10, depth=10, width=1, input_shape=(8, 8, 1))
    assert count_macs(model) == convs + norms + 64 * 10 == 768128
    # Unknown sizes come from the argument.
    assert count_macs(WideResNet(10, depth=10, width=1,
                                 input_shape=(None, None, 1)),
                      (8, 8, 1)) == 768128


def test_a_subclassed_model_cannot_be_counted():
    class Hidden(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Hidden()
    model(keras.ops.zeros((1, 4)))
    with pytest.raises(ValueError, match="subclassed"):
        count_macs(model, (4,))


def test_a_layer_with_weights_of_an_unknown_kind_is_not_counted_as_free():
    model = keras.Sequential([keras.Input((4,)),
                              L.EinsumDense("ab,bc->ac", output_shape=3)])
    with pytest.raises(ValueError, match="EinsumDense"):
        count_macs(model, (4,))


def test_a_probability_heads_logits_are_counted_as_its_dense_layer():
    from kdtrain.outputs import logits_model

    model = keras.Sequential([keras.Input((4,)),
                              L.Dense(3, activation="softmax")])
    assert count_macs(logits_model(model), (4,)) == 4 * 3


# Measuring -------------------------------------------------------------------


def test_measure_rows_and_their_table(tmp_path):
    small = sequential(L.Flatten(), L.Dense(10))
    large = sequential(L.Conv2D(8, 3, padding="same"), L.Flatten(),
                       L.Dense(10))
    path = tmp_path / "small.keras"
    small.save(path)
    data = tradeoff.measure({"small": small, "large": large},
                            accuracy={"small": 0.5, "large": 0.75},
                            labels={"small": "Small"},
                            paths={"small": ["small.keras"]}, root=tmp_path,
                            repeats=2)
    small_row, large_row = data["rows"]
    assert small_row["label"] == "Small" and large_row["label"] == "large"
    assert small_row["params"] == 650 and small_row["macs"] == 640
    assert large_row["macs"] == 8 * 8 * 9 * 8 + 512 * 10
    assert small_row["files"] == {"small.keras": files.sha256_file(path)}
    for row in data["rows"]:
        assert row["latency_ms"] > 0 and row["throughput"] > 0
        assert row["size_bytes"] > 0
    assert data["machine"]["cpu"] == tradeoff.cpu_model()
    assert data["batch_sizes"] == [1, 64] and data["repeats"] == 2
    table = tradeoff.markdown_table(data)
    print(table)
    assert table.startswith(
        "| Model | Parameters | Size on disk | MACs / sample | Latency, batch "
        "1 | Throughput, batch 64 | Test accuracy |")
    assert "| Small | 650 |" in table and "| 640 |" in table
    assert "| 0.5000 |" in table and "| 9.73 k |" in table
    assert f"Measured on {tradeoff.cpu_model()}" in table
    assert "medians of 2 interleaved repeats" in table


def fake_tradeoff(directory):
    """A run's tradeoff.json describing its (fake) model files."""
    rows = []
    for index, (name, label) in enumerate(LABELS.items()):
        members = ["gen-1", "gen-2"] if name == "ensemble" else (
            ["gen-0", "gen-1", "gen-2"] if name == "ensemble_with_teacher"
            else [name.replace("teacher", "gen-0")])
        rows.append({
            "name": name, "label": label, "params": 1000 * len(members),
            "size_bytes": 4000 * len(members), "macs": 20000 * len(members),
            "latency_ms": 0.5 * len(members), "throughput": 900.0,
            "accuracy": 0.95 + 0.005 * index,
            "files": {f"{m}/model.keras": files.sha256_file(
                directory / m / "model.keras") for m in members},
        })
    data = {"rows": rows, "repeats": 3, "batch_sizes": [1, 64],
            "machine": {"cpu": "Test CPU", "cores": 2, "threads": 1,
                        "tensorflow": "2.x"}}
    tradeoff.write(directory, data)
    return data


def test_the_report_shows_the_tradeoff_while_the_files_match(tmp_path):
    write_run(tmp_path)
    markdown = report.write_report(tmp_path)
    assert "Not measured for these model files: `kdtrain evaluate" in markdown
    for generation in range(3):
        (tmp_path / f"gen-{generation}" / "model.keras").write_bytes(
            bytes([generation]) * 100)
    data = fake_tradeoff(tmp_path)
    assert tradeoff.read_matching(tmp_path) == data
    markdown = report.write_report(tmp_path)
    assert "## Trade-off" in markdown
    assert tradeoff.markdown_table(data) in markdown
    assert "| Ensemble | 2,000 | 0.01 MB | 40 k | 1 ms | 900 /s | 0.9650 |" \
        in markdown
    figure = report.draw(json.loads((tmp_path / "results.json").read_text())[
        "table"], split="test", tradeoff=data)
    assert len(figure.axes) == 3
    scatter = figure.axes[2]
    assert scatter.get_title() == "(c) Accuracy against latency"
    assert scatter.get_xlabel().endswith("(ms), Test CPU")
    single, ensembles = scatter.get_lines()
    assert list(single.get_xdata()) == [0.5, 0.5, 0.5]
    assert list(ensembles.get_ydata()) == pytest.approx([0.965, 0.97])
    assert [t.get_text() for t in scatter.texts] == list(LABELS.values())
    # A model file changed since: the measurements no longer describe it.
    (tmp_path / "gen-2" / "model.keras").write_bytes(b"retrained")
    assert tradeoff.read_matching(tmp_path) is None
    assert "Not measured" in report.write_report(tmp_path)
    (tmp_path / "tradeoff.json").write_text("{")
    assert tradeoff.read_matching(tmp_path) is None


def test_reporting_the_tradeoff_never_starts_tensorflow(tmp_path):
    write_run(tmp_path)
    for generation in range(3):
        (tmp_path / f"gen-{generation}" / "model.keras").write_bytes(b"x")
    fake_tradeoff(tmp_path)
    code = (
        "import sys\n"
        "import kdtrain.report\n"
        f"markdown = kdtrain.report.write_report({str(tmp_path)!r})\n"
        "assert '## Trade-off' in markdown and 'Test CPU' in markdown\n"
        "loaded = {'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    process = subprocess.run([sys.executable, "-c", code],
                             capture_output=True, text=True,
                             timeout=HANG_GUARD)
    assert process.returncode == 0, process.stderr


def test_overwriting_a_run_removes_its_tradeoff(tmp_path):
    from kdtrain.chain import ChainDirectory
    from kdtrain.chain.directory import FORMAT

    (tmp_path / "gen-0").mkdir()
    # A manifest written before tradeoff.json existed.
    (tmp_path / "run.json").write_text(json.dumps({
        "format": FORMAT, "config": {"a": 1},
        "manifest": ["config.toml", "gen-0", "results.json", "run.json"]}))
    (tmp_path / "tradeoff.json").write_text("{}")
    directory = ChainDirectory(tmp_path)
    with directory.lock:
        assert not directory.claim({"a": 2}, generations=1, overwrite=True)
    assert "tradeoff.json" in json.loads(
        (tmp_path / "run.json").read_text())["manifest"]
    assert not (tmp_path / "tradeoff.json").exists()


# The commands ----------------------------------------------------------------


def test_evaluate_measures_and_report_shows_it(tiny_digits_run, tmp_path,
                                               capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_digits_run, run)
    assert cli.main(["evaluate", str(run)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    metrics, costs = out.split("What each model costs (tradeoff.json):")
    assert "| Metrics | Teacher | BAN-1 | Ensemble |" in metrics
    data = json.loads((run / "tradeoff.json").read_text())
    assert [row["label"] for row in data["rows"]] == [
        "Teacher", "BAN-1", "Ensemble", "Ensemble + teacher"]
    teacher, student, ensemble, everything = data["rows"]
    assert teacher["macs"] == student["macs"] == 768128  # WRN-10-1, 8x8x1
    assert ensemble["macs"] == student["macs"]  # one student
    assert everything["params"] == 2 * teacher["params"]
    assert student["files"] == {"gen-1/model.keras": files.sha256_file(
        run / "gen-1" / "model.keras")}
    test_rows = [row for row in json.loads(
        (run / "results.json").read_text())["table"] if row["split"] == "test"]
    assert [r["accuracy"] for r in data["rows"]] == pytest.approx(
        [r["accuracy"] for r in test_rows], abs=1e-6)
    assert tradeoff.markdown_table(data) in costs
    assert cli.main(["report", str(run)]) == cli.EXIT_OK
    assert tradeoff.markdown_table(data) in (run / "report.md").read_text()
    os.remove(run / "tradeoff.json")
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--no-tradeoff"]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "What each model costs" not in printed, printed
    assert not (run / "tradeoff.json").exists()
