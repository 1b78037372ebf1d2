import importlib.util
import json
import os
import re

import keras
import numpy as np
import pytest

from conftest import run_without_tensorflow
from kdtrain import cli
from kdtrain import export
from kdtrain import parity
from kdtrain.ensemble import GenerationEnsemble

# Each format's runtime (and converter), skipped only where it is absent.
NEEDS = {"saved_model": (), "litert": ("ai_edge_litert",),
         "onnx": ("tf2onnx", "onnx", "onnxruntime")}
PATHS = {"saved_model": "model", "litert": "model.tflite",
         "onnx": "model.onnx"}


def needs(format):
    for module in NEEDS[format]:
        pytest.importorskip(
            module, reason=f"{module} is not installed: the {format} tests "
            "need kdtrain's export extra (pip install -e \".[export]\")")


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def tiny_cnn(head=None, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation=head)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images(digits):
    x, y = digits
    return x.reshape(-1, 8, 8, 1), y


@pytest.fixture(scope="module")
def trained(images):
    x, y = images
    model = tiny_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], epochs=5, batch_size=32, verbose=0)
    return model


# Every format, reloaded in its runtime ---------------------------------------


@pytest.mark.parametrize("outputs", export.OUTPUTS)
@pytest.mark.parametrize("format", export.FORMATS)
def test_each_format_agrees_with_keras_in_its_runtime(format, outputs,
                                                      trained, images,
                                                      tmp_path):
    needs(format)
    x, y = images
    path = tmp_path / PATHS[format]
    assert export.export_model(trained, path, format=format,
                               outputs=outputs) == os.fspath(path)
    runtime = parity.load_runtime(path)
    actual = runtime(x[1500:])
    logits = np.asarray(trained(x[1500:]))
    expected = logits if outputs == "logits" else softmax(logits)
    assert actual.shape == (len(x) - 1500, 10)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    result = parity.check_parity(path, trained, x[1500:], y[1500:],
                                 outputs=outputs)
    print(result.describe())
    assert result.passed and result.max_abs_diff <= 1e-4
    assert result.samples == len(x) - 1500 and result.format == format
    assert result.keras_accuracy > 0.5
    assert result.runtime_accuracy == pytest.approx(result.keras_accuracy,
                                                    abs=1.5 / result.samples)
    assert "OK" in result.describe()
    assert runtime(x[:1]).shape == (1, 10)  # any batch size


def test_a_probability_head_exports_its_exact_logits(images, tmp_path):
    x, _ = images
    model = tiny_cnn(head="softmax")
    path = tmp_path / "model"
    export.export_model(model, path, outputs="logits")
    logits = parity.load_runtime(path)(x[:64])
    pre_activation = keras.Model(model.input, model.layers[-1].output)
    # The Dense layer's own pre-activation output, not log(probabilities).
    dense = model.layers[-1]
    features = keras.Model(model.input, model.layers[-2].output)(x[:64])
    expected = np.asarray(features) @ np.asarray(dense.kernel) + np.asarray(
        dense.bias)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(softmax(logits), pre_activation(x[:64]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_an_ensemble_exports(format, images, tmp_path):
    needs(format)
    x, y = images
    members = [tiny_cnn(seed=1), tiny_cnn(head="softmax", seed=2)]
    ensemble = GenerationEnsemble(members, outputs=["logits", "auto"])
    for outputs in export.OUTPUTS:
        path = tmp_path / f"{outputs}-{PATHS[format]}"
        export.export_model(ensemble, path, format=format, outputs=outputs)
        result = parity.check_parity(path, ensemble, x[:200], y[:200],
                                     outputs=outputs)
        assert result.passed, result.describe()
    probabilities = parity.load_runtime(path)(x[:16])
    np.testing.assert_allclose(probabilities, ensemble(x[:16]), atol=1e-5)


def test_int8_litert_reports_its_accuracy_drop(trained, images, tmp_path):
    needs("litert")
    x, y = images
    export.export_model(trained, tmp_path / "float.tflite", format="litert")
    path = tmp_path / "int8.tflite"
    export.export_model(trained, path, format="litert", int8=True,
                        representative_data=x[:200])
    result = parity.check_parity(path, trained, x[1500:], y[1500:],
                                 int8=True)
    print(result.describe())
    assert result.int8 and result.tolerance is None and result.passed
    assert result.accuracy_drop == pytest.approx(
        result.keras_accuracy - result.runtime_accuracy)
    assert re.search(r"\(a drop of \d\.\d{4}\)|\(\d\.\d{4} higher\)",
                     result.describe())
    assert "int8: no tolerance" in result.describe()
    assert os.path.getsize(path) < os.path.getsize(tmp_path / "float.tflite")


# Where an export may go ----------------------------------------------------


def test_paths_fit_their_format_and_only_exports_are_replaced(trained,
                                                              tmp_path):
    with pytest.raises(ValueError, match=r"ends in \.tflite"):
        export.export_model(trained, tmp_path / "m.onnx", format="litert")
    with pytest.raises(ValueError, match="a SavedModel is a folder"):
        export.export_model(trained, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="`format` must be one of"):
        export.export_model(trained, tmp_path / "m", format="tflite")
    with pytest.raises(ValueError, match="int8=True` quantizes LiteRT"):
        export.export_model(trained, tmp_path / "m", int8=True)
    mine = tmp_path / "folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a SavedModel export"):
        export.export_model(trained, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine"
    path = tmp_path / "model"
    export.export_model(trained, path)
    with pytest.raises(ValueError, match="pass `overwrite=True`"):
        export.export_model(trained, path)
    export.export_model(trained, path, outputs="probabilities",
                        overwrite=True)
    assert export.is_export(path, "saved_model")
    assert sorted(os.listdir(tmp_path)) == ["folder", "model"]  # no leftovers


def test_a_missing_extra_names_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name in ("tf2onnx", "onnx", "onnxruntime", "ai_edge_litert")
        else find_spec(name, *a)))
    assert export.missing_packages("saved_model") == []
    assert export.missing_packages("litert", run=False) == []
    assert export.missing_packages("litert") == ["ai-edge-litert"]
    with pytest.raises(export.MissingExtra) as error:
        export.require("onnx")
    assert ("format='onnx' needs tf2onnx, onnx, onnxruntime, which are not "
            "installed") in str(error.value)
    assert "pip install 'kdtrain[export]'" in str(error.value)
    with pytest.raises(export.MissingExtra, match="ai-edge-litert"):
        parity.load_runtime("model.tflite")


# The command -----------------------------------------------------------------



@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite", "--output", "m.tflite"],
     "--format must be one of saved_model, litert, onnx. Received: "
     "'tflite'. Did you mean 'litert'?"),
    (["--model", "BAN-7", "--output", "m"],
     "--model BAN-7: the run in {run} has no such model. Choose one of: "
     "Teacher, BAN-1, Ensemble, Ensemble + teacher, best."),
    (["--int8", "--output", "m"],
     "--int8 quantizes LiteRT exports: use it with --format litert"),
    (["--format", "onnx", "--output", "m.tflite"],
     "--output m.tflite: an ONNX file's name ends in .onnx"),
    (["--format", "litert"], "kdtrain export needs --output"),
    (["--output", "m", "--outputs", "logit"],
     "--outputs must be one of logits, probabilities. Received: 'logit'"),
    (["--output", "m", "--modle", "best"],
     "Unknown argument '--modle' for `kdtrain export`. Did you mean "
     "'--model'?"),
])
def test_bad_usage_is_refused_before_tensorflow(argv, message,
                                                tiny_digits_run, tmp_path):
    code, loaded, _, stderr = run_without_tensorflow(
        ["export", str(tiny_digits_run), *argv], tmp_path)
    assert code == cli.EXIT_USAGE
    assert not loaded
    assert message.format(run=tiny_digits_run) in stderr
    assert os.listdir(tmp_path) == []


def test_an_output_that_is_not_an_export_is_never_replaced(tiny_digits_run,
                                                           tmp_path, capsys):
    (tmp_path / "m.onnx").write_text("my notes")
    code = cli.main(["export", str(tiny_digits_run), "--format", "onnx",
                     "--output", str(tmp_path / "m.onnx"), "--overwrite"])
    assert code == cli.EXIT_USAGE
    assert "is not an ONNX export" in capsys.readouterr().err
    assert (tmp_path / "m.onnx").read_text() == "my notes"


def test_the_command_names_a_missing_extra(tiny_digits_run, tmp_path,
                                           capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name == "tf2onnx" else find_spec(name, *a)))
    code = cli.main(["export", str(tiny_digits_run), "--format", "onnx",
                     "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "--format onnx needs tf2onnx" in err
    assert 'pip install -e ".[export]"' in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("format", export.FORMATS)
def test_export_writes_the_best_student_and_checks_it(format,
                                                      tiny_digits_run,
                                                      tmp_path, capsys):
    needs(format)
    output = tmp_path / PATHS[format]
    argv = ["export", str(tiny_digits_run), "--format", format,
            "--output", str(output)]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    print(out)
    # One student: the best by validation accuracy, said so.
    assert "Exported BAN-1 (gen-1: the student with the highest validation " \
           "accuracy" in out
    assert 'input "inputs": float32 (batch, 8, 8, 1)' in out
    assert "on 100 samples" in out and "(tolerance 1e-04: OK)" in out
    assert export.is_export(output, format)
    assert sorted(os.listdir(tmp_path)) == [output.name]
    assert cli.main(argv) == cli.EXIT_USAGE  # not replaced unasked
    assert cli.main(argv + ["--overwrite"]) == cli.EXIT_OK


def test_export_run_of_the_ensemble_and_int8(tiny_digits_run, tmp_path):
    from kdtrain.run_export import export_run

    result = export_run(tiny_digits_run, tmp_path / "ensemble",
                        model="ensemble-with-teacher",
                        outputs="probabilities")
    assert (result.name, result.label) == ("ensemble_with_teacher",
                                          "Ensemble + teacher")
    assert result.parity.passed and result.parity.samples == 100
    needs("litert")
    result = export_run(tiny_digits_run, tmp_path / "int8.tflite",
                        model="teacher", format="litert", int8=True,
                        calibration_samples=64)
    assert result.parity.int8 and result.parity.accuracy_drop is not None
    print(result.parity.describe())


def test_model_names_of_a_run_and_the_best_student(tmp_path):
    from kdtrain.options import UsageError
    from kdtrain.run_models import RunModels
    from test_report import write_run

    results = write_run(tmp_path)
    (tmp_path / "config.toml").write_text('command = "ban"\n')
    models = RunModels(tmp_path)
    for text, name in (("BAN-2", "gen-2"), ("gen-1", "gen-1"),
                       ("teacher", "teacher"), ("Ensemble", "ensemble"),
                       ("ensemble-with-teacher", "ensemble_with_teacher"),
                       ("Ensemble + teacher", "ensemble_with_teacher")):
        assert models.resolve(text) == (name, "")
    assert models.members("ensemble_with_teacher") == [
        "teacher", "gen-1", "gen-2"]
    # Validation accuracy 0.952 (test's is not looked at).
    assert models.resolve("best") == (
        "gen-2", "the student with the highest validation accuracy, 0.9520")
    for row in results["table"]:  # a tie: the lower validation loss wins
        if row["name"] == "gen-1" and row["split"] == "validation":
            row.update(accuracy=0.952, loss=0.01)
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert RunModels(tmp_path).resolve("best") == (
        "gen-1", "the student with the highest validation accuracy, 0.9520, "
        "of 2 tied the one with the lowest validation loss, 0.0100")
    results["table"] = [r for r in results["table"] if r["split"] == "test"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(UsageError, match="has no validation split"):
        RunModels(tmp_path).resolve("best")


def test_an_export_that_disagrees_is_not_written(tiny_digits_run, tmp_path,
                                                 capsys, monkeypatch):
    import dataclasses

    check_parity = parity.check_parity

    def off_by_one(*args, **kwargs):  # as if the runtime computed otherwise
        return dataclasses.replace(check_parity(*args, **kwargs),
                                   max_abs_diff=1.0)

    monkeypatch.setattr(parity, "check_parity", off_by_one)
    output = tmp_path / "student"
    code = cli.main(["export", str(tiny_digits_run), "--output", str(output)])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILURE
    assert "largest absolute difference: 1 (tolerance 1e-04: FAILED)" in out
    assert f"nothing was written to {output}" in err
    assert os.listdir(tmp_path) == []
