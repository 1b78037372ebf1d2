import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import kdtrain
from kdtrain.callbacks import GenerationCallback
from kdtrain.callbacks import GenerationTensorBoard
from kdtrain.callbacks import TqdmProgress
from kdtrain.chain import GenerationRunner
from kdtrain.chain.callbacks import copy_callbacks
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


def read(path):
    accumulator = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


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
    # One shared object saw every generation's model (not a copy each).
    models = {e[1] for e in journal.events if e[0] == "train_begin"}
    assert len(models) == 3
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
