"""`GenerationRunner(distill_ensemble=True)`, `kdtrain ban
--distill-ensemble`: one more student distilled from the ensemble of the
generations, with its own column, files, resume and retraining. References
in NumPy."""

import hashlib
import json
import os
import re
import shutil
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from conftest import tensorboard_events
from kdtrain import cli
from kdtrain import data as data_module
from kdtrain import losses
from kdtrain import models
from kdtrain import options
from kdtrain import quick
from kdtrain import report
from kdtrain.chain import ConfigurationMismatch
from kdtrain.chain import GenerationRunner
from kdtrain.chain import RunDirectoryError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fault_script import tiny_mlp  # noqa: E402

models.register("tiny-mlp", tiny_mlp, overwrite=True)

GENERATIONS = 2
EPOCHS = 12
TEACHER_EPOCHS = 40
TEMPERATURE = 2.0
NAMES = ["teacher", "gen-1", "gen-2", "ensemble", "ensemble_with_teacher",
         "gen-ensemble"]


def build_model():
    """`conftest.mlp`'s layers, initialized wide: a fresh student's logits
    are far from uniform, so its first loss depends on the targets."""
    wide = keras.initializers.RandomNormal(stddev=0.6)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(16, activation="relu", kernel_initializer=wide),
        keras.layers.Dense(10, kernel_initializer=wide),
    ])


class FirstStep(keras.callbacks.Callback):
    """Keeps the student's weights before its first step, and that step's
    loss (of its first epoch: later epochs of a resume are not first)."""

    def __init__(self, store):
        super().__init__()
        self.store = store

    def on_train_begin(self, logs=None):
        student = getattr(self.model, "student", self.model)
        self.store["weights"] = [np.array(w) for w in student.get_weights()]

    def on_train_batch_end(self, batch, logs=None):
        self.store.setdefault("loss", float(logs["loss"]))


class Counter(keras.callbacks.Callback):
    """Counts the epochs trained, per generation (shared list)."""

    def __init__(self, generation, calls):
        super().__init__()
        self.generation = generation
        self.calls = calls

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append((int(self.generation), epoch))


def split(digits):
    x, y = digits
    return (x[:300], y[:300]), (x[300:450], y[300:450]), (x[1500:], y[1500:])


def make_runner(directory=None, **kwargs):
    options_ = dict(
        generations=GENERATIONS,
        optimizer=lambda: keras.optimizers.Adam(0.05),
        distillation_loss=losses.SoftTargets(temperature=TEMPERATURE),
        directory=directory,
        seed=0,
        progress=False,
        verbose=0,
        distill_ensemble=True,
    )
    options_.update(kwargs)
    return GenerationRunner(build_model, **options_)


def no_callbacks(generation):
    return []


def run_chain(runner, digits, callbacks=no_callbacks):
    """Runs the chain; `callbacks` is always a function (part of the
    configuration: a resume passes one too)."""
    train, validation, test = split(digits)
    # One batch per epoch: the first step's loss is the mean over every
    # training sample, whatever their order.
    return runner.run(train, validation_data=validation, test_data=test,
                      epochs=EPOCHS, teacher_epochs=TEACHER_EPOCHS,
                      batch_size=len(train[0]), callbacks=callbacks)


def first_steps():
    stores = {}

    def callbacks(generation):
        stores[int(generation)] = {}
        return [FirstStep(stores[int(generation)])]

    return stores, callbacks


@pytest.fixture(scope="module")
def chain(digits, tmp_path_factory):
    directory = tmp_path_factory.mktemp("distill-ensemble") / "run"
    stores, callbacks = first_steps()
    runner = make_runner(directory)
    result = run_chain(runner, digits, callbacks)
    assert runner.cache_used is True
    return SimpleNamespace(result=result, directory=directory, stores=stores,
                           digits=digits)


# NumPy references ------------------------------------------------------------


def numpy_logits(weights, x):
    """The logits of `mlp` (Dense-relu-Dense) in float64."""
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in weights]
    return np.maximum(x.astype(np.float64) @ w1 + b1, 0.0) @ w2 + b2


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def saved_weights(directory, name):
    return keras.saving.load_model(
        directory / name / "model.keras"
    ).get_weights()


def soft_targets_loss(teacher_probabilities, student_logits):
    """SoftTargets at TEMPERATURE: the teacher's logits are log p."""
    q = softmax(np.log(teacher_probabilities) / TEMPERATURE)
    return float(np.mean(-np.sum(
        q * log_softmax(student_logits / TEMPERATURE), axis=-1
    )))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The column ------------------------------------------------------------------


def test_the_table_has_its_own_column(chain):
    result = chain.result
    assert [(r["name"], r["split"]) for r in result.table] == [
        (name, split) for name in NAMES for split in ("validation", "test")
    ]
    row = result.row("gen-ensemble")
    assert row["label"] == "Ensemble-distilled"
    # One model: its own parameters and training time, not the members'.
    assert row["params"] == result.row("gen-1")["params"] == (
        64 * 16 + 16 + 16 * 10 + 10
    )
    assert row["wall_time"] > 0
    assert row["wall_time"] != result.row("ensemble")["wall_time"]
    header = result.to_markdown().splitlines()[0]
    assert header == ("| Metrics | Teacher | BAN-1 | BAN-2 | Ensemble | "
                      "Ensemble + teacher | Ensemble-distilled |")
    # A single model in the report's figure (a blue point).
    assert report.is_single_model("gen-ensemble")
    assert not report.is_single_model("ensemble")
    # The generations stay `models`; the extra student is apart.
    assert result.names == ["teacher", "gen-1", "gen-2"]
    assert len(result.models) == GENERATIONS + 1
    assert result.distilled_ensemble is not None
    assert all(result.distilled_ensemble is not m for m in result.models)


def test_its_numbers_are_an_independent_evaluation_of_the_saved_model(chain):
    weights = saved_weights(chain.directory, "gen-ensemble")
    for split_name, (x, y) in (("validation", split(chain.digits)[1]),
                               ("test", split(chain.digits)[2])):
        logits = numpy_logits(weights, x)
        row = chain.result.row("gen-ensemble", split_name)
        np.testing.assert_allclose(
            row["accuracy"], np.mean(logits.argmax(-1) == y), atol=1e-6
        )
        crossentropy = -np.mean(log_softmax(logits)[np.arange(len(y)), y])
        np.testing.assert_allclose(row["loss"], crossentropy, rtol=1e-4)
    # The returned model is the saved one.
    x_test = split(chain.digits)[2][0]
    np.testing.assert_allclose(
        chain.result.distilled_ensemble.predict(x_test, verbose=0),
        numpy_logits(weights, x_test), rtol=1e-4, atol=1e-4,
    )


def test_the_first_step_distills_the_averaged_probabilities(chain):
    """From the cache (float16 rows relative to their maximum)."""
    x = split(chain.digits)[0][0]
    store = chain.stores[GENERATIONS + 1]
    members = [softmax(numpy_logits(saved_weights(chain.directory,
                                                  f"gen-{k}"), x))
               for k in range(1, GENERATIONS + 1)]
    teacher = softmax(numpy_logits(saved_weights(chain.directory, "gen-0"),
                                   x))
    student = numpy_logits(store["weights"], x)
    expected = soft_targets_loss(np.mean(members, axis=0), student)
    np.testing.assert_allclose(store["loss"], expected, rtol=1e-4)
    # Neither the last generation alone nor the ensemble with the teacher.
    for other in (members[-1], np.mean([teacher, *members], axis=0)):
        assert abs(soft_targets_loss(other, student) - expected) > 1e-2


def test_online_the_first_step_loss_is_exact(digits):
    """Without the cache, the ensemble's exact log-probabilities teach."""
    stores, callbacks = first_steps()
    result = run_chain(make_runner(cache_teacher=False), digits, callbacks)
    x = split(digits)[0][0]
    members = [softmax(numpy_logits(m.get_weights(), x))
               for m in result.students]
    student = numpy_logits(stores[GENERATIONS + 1]["weights"], x)
    expected = soft_targets_loss(np.mean(members, axis=0), student)
    np.testing.assert_allclose(stores[GENERATIONS + 1]["loss"], expected,
                               rtol=1e-5)
    # The members are unfrozen again, and each student is its own model.
    assert all(m.trainable for m in result.models)
    assert result.distilled_ensemble.trainable
    assert "gen-ensemble" in result.histories


# Its files -------------------------------------------------------------------


def test_its_files_are_those_of_a_generation(chain):
    directory = chain.directory
    folder = directory / "gen-ensemble"
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras",
                                                        "record.json"]
    record = json.loads((folder / "record.json").read_text())
    assert record["sha256"] == sha256(folder / "model.keras")
    assert record["path"] == "gen-ensemble/model.keras"
    assert record["taught_by"] == {"name": "ensemble", "members": [
        {"generation": k, "name": f"gen-{k}",
         "sha256": sha256(directory / f"gen-{k}" / "model.keras")}
        for k in range(1, GENERATIONS + 1)
    ]}
    assert record["epochs"] == EPOCHS
    assert len(record["history"]["distillation_loss"]) == EPOCHS
    assert record["params"] == chain.result.row("gen-ensemble")["params"]
    results = json.loads((directory / "results.json").read_text())
    assert results["config"]["distill_ensemble"] is True
    assert results["generations"]["gen-ensemble"] == record
    assert "gen-ensemble" in json.loads(
        (directory / "run.json").read_text())["manifest"]
    assert not (directory / f"gen-{GENERATIONS + 1}").exists()
    assert chain.result.histories["gen-ensemble"].history == (
        record["history"]
    )
    assert report.read_histories(directory)["gen-ensemble"] == (
        record["history"]
    )


def test_it_is_logged_like_a_generation(chain):
    import tensorflow as tf

    tensors = tensorboard_events

    logs = chain.directory / "logs"
    assert not (logs / f"gen-{GENERATIONS + 1}").exists()
    train = tensors(logs / "gen-ensemble" / "train")
    assert [e.step for e in train.Tensors("epoch_distillation_loss")] == (
        list(range(EPOCHS))
    )
    # The summary's step after the last generation.
    events = tensors(logs / "summary").Tensors("test/accuracy")
    by_step = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events}
    assert sorted(by_step) == list(range(GENERATIONS + 2))
    np.testing.assert_allclose(
        by_step[GENERATIONS + 1],
        chain.result.row("gen-ensemble", "test")["accuracy"], rtol=1e-6,
    )


# Resume, configuration, retraining -------------------------------------------


def copy_of(chain, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(chain.directory, copy)
    return copy


def test_a_rerun_of_the_finished_chain_trains_nothing(chain, tmp_path):
    directory = copy_of(chain, tmp_path)
    model = directory / "gen-ensemble" / "model.keras"
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    calls = []
    result = run_chain(make_runner(directory), chain.digits,
                       lambda g: [Counter(g, calls)])
    assert calls == []
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before
    assert result.table == chain.result.table
    assert result.histories["gen-ensemble"].history == (
        chain.result.histories["gen-ensemble"].history
    )


def test_another_setting_of_the_flag_is_another_chain(chain):
    results = (chain.directory / "results.json").read_bytes()
    with pytest.raises(ConfigurationMismatch) as error:
        run_chain(make_runner(chain.directory, distill_ensemble=False),
                  chain.digits)
    assert "distill_ensemble: true in the directory, false now" in str(
        error.value
    )
    assert (chain.directory / "results.json").read_bytes() == results


def test_retrain_from_the_last_index_retrains_only_it(chain, tmp_path):
    directory = copy_of(chain, tmp_path)
    kept = {k: (directory / f"gen-{k}" / "model.keras").stat().st_mtime_ns
            for k in range(GENERATIONS + 1)}
    calls = []
    result = run_chain(
        make_runner(directory, retrain_from=GENERATIONS + 1), chain.digits,
        lambda g: [Counter(g, calls)],
    )
    # N + 1 is what a callbacks function receives for it.
    assert calls == [(GENERATIONS + 1, e) for e in range(EPOCHS)]
    assert kept == {
        k: (directory / f"gen-{k}" / "model.keras").stat().st_mtime_ns
        for k in range(GENERATIONS + 1)
    }
    record = json.loads((directory / "gen-ensemble" / "record.json")
                        .read_text())
    assert record["sha256"] == sha256(directory / "gen-ensemble" /
                                      "model.keras")
    assert [r["name"] for r in result.table][-2:] == ["gen-ensemble"] * 2
    assert "retrain_from" not in json.loads(
        (directory / "run.json").read_text())


def test_retraining_a_generation_discards_the_distilled_student(chain,
                                                                tmp_path):
    directory = copy_of(chain, tmp_path)
    gen_1 = (directory / "gen-1" / "model.keras").stat().st_mtime_ns
    gen_2 = (directory / "gen-2" / "model.keras").stat().st_mtime_ns
    calls = []
    run_chain(make_runner(directory, retrain_from=2), chain.digits,
              lambda g: [Counter(g, calls)])
    assert sorted({g for g, _ in calls}) == [2, GENERATIONS + 1]
    assert (directory / "gen-1" / "model.keras").stat().st_mtime_ns == gen_1
    assert (directory / "gen-2" / "model.keras").stat().st_mtime_ns != gen_2
    record = json.loads((directory / "gen-ensemble" / "record.json")
                        .read_text())
    assert [m["sha256"] for m in record["taught_by"]["members"]] == [
        sha256(directory / f"gen-{k}" / "model.keras")
        for k in range(1, GENERATIONS + 1)
    ]


def test_retrain_from_is_validated_against_the_extra_student(tmp_path):
    make_runner(tmp_path, retrain_from=GENERATIONS + 1)
    with pytest.raises(ValueError, match=r"0\.\.3 \(3: the student "
                                         r"distilled from the ensemble\)"):
        make_runner(tmp_path, retrain_from=GENERATIONS + 2)
    with pytest.raises(ValueError, match=r"0\.\.2, and needs"):
        make_runner(tmp_path, retrain_from=GENERATIONS + 1,
                    distill_ensemble=False)


def test_a_missing_or_stale_distilled_student_is_refused(chain, tmp_path):
    directory = copy_of(chain, tmp_path)
    (directory / "gen-ensemble" / "model.keras").unlink()
    with pytest.raises(RunDirectoryError) as error:
        run_chain(make_runner(directory), chain.digits)
    message = str(error.value)
    assert "gen-ensemble/model.keras is missing, though the student " \
           "distilled from the ensemble finished" in message
    assert "To train the student distilled from the ensemble again, pass " \
           "`retrain_from=3`" in message
    directory = copy_of(chain, tmp_path / "stale")
    path = directory / "gen-ensemble" / "record.json"
    record = json.loads(path.read_text())
    record["taught_by"]["members"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(RunDirectoryError, match="its training is stale"):
        run_chain(make_runner(directory), chain.digits)


# Checked before anything is written ------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_flag_must_be_a_bool(value, tmp_path):
    with pytest.raises(ValueError) as error:
        make_runner(tmp_path / "run", distill_ensemble=value)
    assert (f"`distill_ensemble` must be True or False. Received: "
            f"distill_ensemble={value!r}") in str(error.value)
    assert not (tmp_path / "run").exists()


def test_one_generation_has_no_ensemble_to_distill(tmp_path):
    with pytest.raises(ValueError, match="with generations=1 that ensemble "
                                         "is generation 1 alone"):
        make_runner(tmp_path / "run", generations=1)
    make_runner(tmp_path / "run", generations=1, distill_ensemble=False)
    assert not (tmp_path / "run").exists()


def test_feature_losses_are_refused():
    with pytest.raises(ValueError, match="feature_losses"):
        make_runner(feature_losses=[losses.AttentionTransfer(["dense"])])


# The command line ------------------------------------------------------------


from test_run_directory import TINY  # noqa: E402
from test_run_directory import _overstate  # noqa: E402
from test_run_directory import kdtrain  # noqa: E402
from test_run_directory import table  # noqa: E402


def test_the_option(tmp_path):
    ban = {o.key: o for o in options.options_for("ban")}
    assert ban["distill_ensemble"].type is bool
    assert ban["distill_ensemble"].default is False
    assert "distill_ensemble" not in {
        o.key for o in options.options_for("distill")
    }
    assert options.parse(["ban"])[1].distill_ensemble is False
    assert options.parse(["ban", "--distill-ensemble"])[1].distill_ensemble
    config = tmp_path / "config.toml"
    config.write_text("distill_ensemble = true\ngenerations = 3\n")
    settings = options.parse(["ban", "--config", str(config)])[1]
    assert settings.distill_ensemble is True
    assert options.parse(["ban", "--distill-ensemble", "--retrain-from",
                          "4", "--generations", "3"])[1].retrain_from == 4
    for argv, words in (
        (["--generations", "1"], "with --generations 1 that ensemble is "
                                 "generation 1 alone"),
        (["--attention-transfer", "dense"], "--attention-transfer"),
        (["--retrain-from", "5", "--generations", "3"],
         "from 0 to 4 (4: the student distilled from the ensemble)"),
    ):
        with pytest.raises(options.UsageError, match=re.escape(words)):
            options.parse(["ban", "--distill-ensemble", *argv])
    with pytest.raises(options.UsageError, match="Unknown argument"):
        options.parse(["distill", "--distill-ensemble"])
    config.write_text("distill_ensemble = 1\n")
    with pytest.raises(options.UsageError, match="must be bool"):
        options.parse(["ban", "--config", str(config)])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["ban", *TINY, "--distill-ensemble",
                     "--directory", str(directory)]) == 0
    return directory


def test_the_command_line_trains_and_evaluates_it(cli_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    assert "distill_ensemble = true" in (run / "config.toml").read_text()
    assert (run / "gen-ensemble" / "model.keras").is_file()
    # Stored numbers are not what evaluate reports: it measures the files.
    for path in [run / "results.json", *run.glob("gen-*/record.json")]:
        _overstate(path)
    code, out, err = kdtrain(capsys, "evaluate", str(run))
    assert code == cli.EXIT_OK, err
    lines = table(out)
    assert lines[0].rstrip().endswith("| Ensemble-distilled |")
    settings = options.parse(["ban", *TINY, "--directory", str(run)])[1]
    from kdtrain import commands

    loaded = data_module.load("digits", **commands.data_options(settings))
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in loaded.test])
    x, y = np.concatenate(xs), np.concatenate(ys)
    model = keras.saving.load_model(run / "gen-ensemble" / "model.keras")
    accuracy = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
    printed = next(line for line in lines if line.startswith("| Accuracy"))
    assert float(printed.split("|")[7]) == pytest.approx(accuracy, abs=6e-5)
    assert "0.9877" not in out


def test_the_command_line_resumes_and_checks_it(cli_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    argv = ["ban", *TINY, "--distill-ensemble", "--directory", str(run)]
    # A finished run: its table, without TensorFlow, after checking every
    # model file, the distilled student's included.
    settings = options.parse(argv)[1]
    # The copy's own settings file (it names its directory).
    (run / "config.toml").write_text(options.config_text(settings))
    expected = quick.finished_table("ban", settings)
    assert expected is not None and "Ensemble-distilled" in expected
    model = run / "gen-ensemble" / "model.keras"
    saved = model.read_bytes()
    shutil.copy(run / "gen-1" / "model.keras", model)
    assert quick.finished_table("ban", settings) is None
    code, _, err = kdtrain(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "gen-ensemble/model.keras has changed since the student " \
           "distilled from the ensemble finished" in err
    assert "--retrain-from 3" in err
    model.write_bytes(saved)
    code, out, err = kdtrain(capsys, *argv)
    assert code == cli.EXIT_OK, err
    assert table(out)[0].rstrip().endswith("| Ensemble-distilled |")
    # The same directory without the flag is another chain.
    code, _, err = kdtrain(capsys, "ban", *TINY, "--directory", str(run))
    assert code == cli.EXIT_USAGE
    assert "distill_ensemble: true in the directory, false now" in err
    assert "--overwrite" in err


def test_its_index_survives_copies_and_pickles():
    import copy
    import pickle

    from kdtrain.callbacks.names import DistilledEnsembleIndex
    from kdtrain.callbacks.names import generation_name

    index = DistilledEnsembleIndex(3)
    for twin in (copy.copy(index), copy.deepcopy(index),
                 pickle.loads(pickle.dumps(index))):
        assert twin == 4 and generation_name(twin) == "gen-ensemble"
