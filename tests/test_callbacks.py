import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdtrain
from kdtrain.callbacks import GenerationCallback
from kdtrain.callbacks import GenerationTensorBoard
from kdtrain.callbacks import TqdmProgress
from kdtrain.chain import GenerationRunner
from kdtrain.chain.callbacks import copy_callbacks
from conftest import HANG_GUARD
from conftest import tensorboard_events
from conftest import mlp


def build_model():
    return mlp(seed=None)


def compiled(model):
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


read = tensorboard_events


def values(accumulator, tag):
    return [
        (event.step, float(tf.make_ndarray(event.tensor_proto)))
        for event in accumulator.Tensors(tag)
    ]


# GenerationTensorBoard ---------------------------------------------------------


def test_tensorboard_with_plain_fit_one_run_per_fit(digits, trained_teacher,
                                                    tmp_path):
    x, y = digits
    board = GenerationTensorBoard(tmp_path)
    model = compiled(build_model())
    history = model.fit(x, y, epochs=3, batch_size=256, verbose=0,
                        validation_split=0.2, callbacks=[board])
    trainable = trained_teacher.trainable
    distiller = kdtrain.Distiller(build_model(), trained_teacher)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x, y, epochs=2, batch_size=256, verbose=0,
                  callbacks=[board])
    trained_teacher.trainable = trainable
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gen-0", "gen-1", "summary"
    ]
    run = read(tmp_path / "gen-0" / "train")
    losses = values(run, "epoch_loss")
    assert [step for step, _ in losses] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in losses],
                               history.history["loss"], rtol=1e-5)
    validation = read(tmp_path / "gen-0" / "validation")
    np.testing.assert_allclose(
        [v for _, v in values(validation, "epoch_accuracy")],
        history.history["val_accuracy"], rtol=1e-5,
    )
    student = read(tmp_path / "gen-1" / "train")
    for tag in ("epoch_loss", "epoch_distillation_loss",
                "epoch_ground_truth_loss", "epoch_accuracy"):
        assert [step for step, _ in values(student, tag)] == [0, 1]
    summary = read(tmp_path / "summary")
    final = values(summary, "final/loss")
    assert [step for step, _ in final] == [0, 1]
    np.testing.assert_allclose(final[0][1], history.history["loss"][-1],
                               rtol=1e-5)


def test_tensorboard_evaluation_and_hparams(tmp_path):
    board = GenerationTensorBoard(tmp_path)
    board.log_evaluation(0, {"accuracy": 0.5, "loss": 1.5})
    board.log_evaluation(1, {"accuracy": 0.75, "loss": 1.0, "note": "x"})
    board.log_hparams({"generations": 2, "loss": "soft_targets",
                       "optimizer": {"lr": 1}}, metrics=["test/accuracy"])
    summary = read(tmp_path / "summary")
    assert values(summary, "test/accuracy") == [(0, 0.5), (1, 0.75)]
    assert "test/note" not in summary.Tags()["tensors"]
    content = summary.PluginTagToContent("hparams")
    assert content
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions = [
        plugin_data_pb2.HParamsPluginData.FromString(data)
        for data in content.values()
    ]
    started = [s.session_start_info for s in sessions
               if s.HasField("session_start_info")]
    assert started[0].hparams["generations"].number_value == 2
    assert started[0].hparams["loss"].string_value == "soft_targets"
    assert started[0].hparams["optimizer"].string_value == "{'lr': 1}"


def test_tensorboard_generation_set_by_a_runner(tmp_path, digits):
    x, y = digits
    board = GenerationTensorBoard(tmp_path, initial_generation=3)
    board.set_generation(7)
    compiled(build_model()).fit(x[:256], y[:256], epochs=1, verbose=0,
                                callbacks=[board])
    compiled(build_model()).fit(x[:256], y[:256], epochs=1, verbose=0,
                                callbacks=[board])
    assert (tmp_path / "gen-7" / "train").is_dir()
    assert (tmp_path / "gen-8" / "train").is_dir()


def summary_files(log_dir):
    """The summary run's event files: name to bytes."""
    return {p.name: p.read_bytes()
            for p in (log_dir / "summary").iterdir() if "tfevents" in p.name}


def summary_keys(log_dir):
    """`(tag, step)` of every value in the summary run's event files."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2

    keys = []
    for name in sorted(summary_files(log_dir)):
        loader = event_file_loader.RawEventFileLoader(
            str(log_dir / "summary" / name)
        )
        for record in loader.Load():
            event = event_pb2.Event.FromString(record)
            keys += [(value.tag, event.step) for value in event.summary.value]
    return keys


def session_hparams(log_dir):
    """The HParams of the summary run's session, as plain values."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = read(log_dir / "summary").PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    )
    return {name: getattr(value, value.WhichOneof("kind"))
            for name, value in data.session_start_info.hparams.items()}


def test_tensorboard_summary_is_one_file_rewritten_when_it_changes(tmp_path):
    hparams = {"generations": 2, "loss": "soft_targets"}
    board = GenerationTensorBoard(tmp_path)
    board.log_evaluation(0, {"accuracy": 0.5, "loss": 1.5})
    board.log_hparams(hparams, metrics=["test/accuracy"], trial_id="run")
    first = summary_files(tmp_path)
    assert len(first) == 1
    # A rerun (a new process, so a new callback) logging the same values,
    # the configuration included, writes nothing.
    again = GenerationTensorBoard(tmp_path)
    again.log_evaluation(0, {"accuracy": 0.5, "loss": 1.5})
    again.log_hparams(hparams, metrics=["test/accuracy"], trial_id="run")
    assert summary_files(tmp_path) == first
    # New and changed values (a resumed, a retrained generation): one file,
    # named after the last so that a watching TensorBoard moves on to it.
    again.log_evaluation(1, {"accuracy": 0.75, "loss": 1.0})
    again.log_evaluation(0, {"accuracy": 0.625, "loss": 1.25})
    second = summary_files(tmp_path)
    assert len(second) == 1 and min(second) > min(first)
    assert sorted(p.name for p in (tmp_path / "summary").iterdir()) == sorted(
        second
    )
    assert values(read(tmp_path / "summary"), "test/accuracy") == [
        (0, 0.625), (1, 0.75)
    ]
    keys = summary_keys(tmp_path)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 6
    assert session_hparams(tmp_path) == hparams


def test_the_same_configuration_from_another_process_writes_nothing(
        tmp_path):
    # The HParams' map is serialized in an order that depends on the
    # process's string hashing.
    code = (
        "import sys\n"
        "from kdtrain.callbacks import GenerationTensorBoard\n"
        "GenerationTensorBoard(sys.argv[1]).log_hparams(\n"
        "    {f'h{i}': i for i in range(30)}, metrics=['test/accuracy'],\n"
        "    trial_id='run')\n"
    )
    for seed in ("1", "2"):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], check=True,
            timeout=HANG_GUARD, env={**os.environ, "PYTHONHASHSEED": seed,
                              "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if seed == "1":
            first = summary_files(tmp_path)
    assert len(first) == 1 and summary_files(tmp_path) == first


def test_tensorboard_folds_in_older_summary_files(tmp_path):
    for step in (0, 1):  # As earlier versions wrote them: a file per call.
        writer = tf.summary.create_file_writer(str(tmp_path / "summary"))
        with writer.as_default():
            tf.summary.scalar("test/accuracy", 0.5 + step / 4, step=step)
        writer.close()
    assert len(summary_files(tmp_path)) == 2
    GenerationTensorBoard(tmp_path).log_evaluation(2, {"accuracy": 0.875})
    assert len(summary_files(tmp_path)) == 1
    assert values(read(tmp_path / "summary"), "test/accuracy") == [
        (0, 0.5), (1, 0.75), (2, 0.875)
    ]


def test_chain_summary_records_the_configuration_once(digits, tmp_path):
    x, y = digits
    # A pipeline records no batch size; the runner reads it off a batch.
    train = tf.data.Dataset.from_tensor_slices((x[:300], y[:300])).batch(50)
    test = (x[300:400], y[300:400])

    def run():
        runner = GenerationRunner(build_model, generations=1, seed=0,
                                  verbose=0, directory=tmp_path,
                                  progress=False, cache_teacher=False)
        runner.run(train, test_data=test, epochs=1, batch_size=100)

    def logs():
        return {p: p.read_bytes() for p in (tmp_path / "logs").rglob("*")
                if p.is_file()}

    run()
    assert session_hparams(tmp_path / "logs") == {
        "dataset": "tf.data.Dataset", "batch_size": 50, "model": "Sequential",
        "params": 64 * 16 + 16 + 16 * 10 + 10, "teacher_model": "Sequential",
        "teacher": "trained", "generations": 1,
        "distillation_loss": "SoftTargets", "temperature": 1.0,
        "ground_truth_weight": 0.0, "feature_losses": "none",
        "teach_from": "previous", "epochs": 1, "teacher_epochs": 1,
        "optimizer": "Adam", "learning_rate": pytest.approx(0.001),
        "seed": 0,
    }
    before = logs()
    assert len(summary_files(tmp_path / "logs")) == 1
    run()  # Finished: loads everything, logs nothing new.
    assert logs() == before
    # Resumed after generation 1 was lost: it trains again, and the summary
    # stays one file with each value once.
    for name in ("gen-1", "results.json"):
        kdtrain.files.remove(tmp_path / name)
    run()
    assert len(summary_files(tmp_path / "logs")) == 1
    keys = summary_keys(tmp_path / "logs")
    assert len(keys) == len(set(keys))
    steps = [s for s, _ in values(read(tmp_path / "logs" / "summary"),
                                  "test/accuracy")]
    assert steps == [0, 1]

# TqdmProgress ---------------------------------------------------------------------


def test_tqdm_progress_with_plain_fit(digits, capsys):
    x, y = digits
    stream = io.StringIO()
    compiled(build_model()).fit(
        x, y, epochs=2, batch_size=256, verbose=0, validation_split=0.1,
        callbacks=[TqdmProgress(file=stream)],
    )
    text = stream.getvalue()
    assert "2/2" in text  # The epoch bar finished.
    assert "/7 [" in text  # A step bar: ceil(1617 / 256) steps.
    assert "loss=" in text and "accuracy=" in text and "val_loss=" in text
    captured = capsys.readouterr()
    assert captured.out == ""


def test_tqdm_progress_drives_a_chain(digits, trained_teacher):
    x, y = digits
    stream = io.StringIO()
    runner = GenerationRunner(
        build_model, generations=2, teacher=trained_teacher,
        progress=TqdmProgress(file=stream, steps=False), verbose=0,
    )
    runner.run((x[:512], y[:512]), epochs=1, batch_size=256, evaluate=False)
    text = stream.getvalue()
    assert "2/2" in text and "BAN-2" in text and "BAN-1" in text


def test_tqdm_progress_starts_at_a_resumed_epoch():
    progress = TqdmProgress(file=io.StringIO(), steps=False)
    progress.set_params({"epochs": 5, "steps": 3})
    progress.on_train_begin()
    progress.on_epoch_begin(3)
    progress.on_epoch_end(3, {"loss": 0.5})
    assert progress._epoch_bar.n == 4
    progress.on_train_end()


def test_runner_uses_both_by_default_with_a_directory(tmp_path):
    runner = GenerationRunner(build_model, directory=tmp_path)
    board, bars = runner._monitors
    assert isinstance(board, GenerationTensorBoard)
    assert isinstance(bars, TqdmProgress)
    off = GenerationRunner(build_model, directory=tmp_path,
                           tensorboard=False, progress=False)
    assert off._monitors == (None, None)
    assert GenerationRunner(build_model)._monitors == (None, None)
    with pytest.raises(ValueError, match="directory"):
        GenerationRunner(build_model, tensorboard=True)


# Copying callbacks ---------------------------------------------------------------


def test_copies_do_not_copy_the_model_or_share_state(digits):
    x, y = digits
    model = compiled(build_model())
    stopper = keras.callbacks.EarlyStopping(
        monitor="loss", patience=1, restore_best_weights=True
    )
    model.fit(x[:256], y[:256], epochs=2, verbose=0, callbacks=[stopper])
    assert stopper.best_weights is not None
    (copy,) = copy_callbacks([stopper], generation=1)
    assert copy is not stopper
    assert copy.model is None  # The trained model was not deep-copied.
    assert copy.patience == 1 and copy.restore_best_weights
    copy.on_train_begin()
    assert copy.best_weights is None and copy.wait == 0
    assert stopper.best_weights is not None


# The chain's events ---------------------------------------------------------------


class Journal(GenerationCallback):
    """A user's own generation callback: writes down every event."""

    def __init__(self):
        super().__init__()
        self.events = []

    def on_chain_begin(self, logs=None):
        self.events.append(("chain_begin", logs["models"], logs["finished"]))

    def on_generation_begin(self, generation, logs=None):
        self.events.append(("generation_begin", generation, logs["label"]))

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin", id(self.model)))

    def on_generation_end(self, generation, logs=None):
        self.events.append(("generation_end", generation, "loss" in logs))

    def on_evaluation(self, step, logs=None):
        self.events.append(("evaluation", step, logs["name"], logs["split"]))

    def on_chain_end(self, logs=None):
        self.events.append(("chain_end", logs["completed"],
                            tuple(logs.get("trained", ()))))


def test_a_users_generation_callback_follows_the_chain(digits, tmp_path):
    x, y = digits
    journal = Journal()
    runner = GenerationRunner(build_model, generations=2, seed=0, verbose=0,
                              directory=tmp_path, progress=False,
                              tensorboard=False)
    runner.run((x[:300], y[:300]), test_data=(x[300:400], y[300:400]),
               epochs=1, batch_size=100, callbacks=[journal])
    kinds = [event[0] for event in journal.events]
    assert kinds == [
        "chain_begin",
        "generation_begin", "train_begin", "evaluation", "generation_end",
        "generation_begin", "train_begin", "evaluation", "generation_end",
        "generation_begin", "train_begin", "evaluation", "generation_end",
        "evaluation", "evaluation", "chain_end",
    ]
    assert journal.events[0] == ("chain_begin", 3, 0)
    assert [e[1:] for e in journal.events if e[0] == "generation_begin"] == [
        (0, "Teacher"), (1, "BAN-1"), (2, "BAN-2")
    ]
    # One shared object saw every generation's training (not a copy each):
    # the teacher's model, then one Distiller, which the cached chain
    # reuses for the next student.
    models = [e[1] for e in journal.events if e[0] == "train_begin"]
    assert models[0] != models[1] and models[1] == models[2]
    assert [e[1:] for e in journal.events if e[0] == "evaluation"][-2:] == [
        (2, "ensemble", "test"), (2, "ensemble_with_teacher", "test")
    ]
    assert journal.events[-1] == ("chain_end", True, (0, 1, 2))
    # A rerun loads everything: the chain's events only.
    again = Journal()
    runner.run((x[:300], y[:300]), test_data=(x[300:400], y[300:400]),
               epochs=1, batch_size=100, callbacks=[again])
    assert again.events == [("chain_begin", 3, 3), ("chain_end", True, ())]


def test_epoch_seed_derives_all_randomness_from_seed_generation_and_epoch():
    from kdtrain.chain.callbacks import EpochSeed
    from kdtrain.chain.callbacks import derived_seed
    from kdtrain.chain.callbacks import seed_generators

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3)])
    loss = kdtrain.losses.PermutedPredictions(seed=3)
    # A chain without a distillation loss passes None: nothing to reset.
    generators = seed_generators(model, None, loss)
    assert len(generators) == 2
    variable = tf.Variable([0, 0], dtype=tf.int64)
    seeder = EpochSeed(variable, seed=7, generation=2,
                       random_objects=[model, loss])

    def states(epoch):
        seeder.on_epoch_begin(epoch)
        return [g.state.numpy().tolist() for g in generators]

    first = states(3)
    for generator in generators:  # draws move the states on...
        generator.next()
    assert states(3) == first  # ...and the epoch's start puts them back
    assert states(4) != first
    assert variable.numpy().tolist() == [derived_seed(7, 2), 4]
    assert derived_seed(7, 2) != derived_seed(7, 3)
