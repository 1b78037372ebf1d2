"""`GenerationBackup`: a crashed `fit` resumes as if it had never stopped."""

import errno
import os

import keras
import numpy as np
import pytest

from kdtrain import faults
from kdtrain.chain.backup import GenerationBackup
from kdtrain.chain.backup import stateful
from kdtrain.chain.callbacks import EpochRecord


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def model(dtype=None):
    keras.utils.set_random_seed(0)
    built = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(8, activation="relu",
                                                 dtype=dtype),
                              keras.layers.Dense(2, dtype=dtype)])
    built.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return built


class Crash(keras.callbacks.Callback):
    """Raises at the start of `epoch`, or at the end of training."""

    def __init__(self, epoch=None, at_train_end=False):
        super().__init__()
        self.epoch = epoch
        self.at_train_end = at_train_end

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")

    def on_train_end(self, logs=None):
        if self.at_train_end:
            raise RuntimeError("crash")


def fit(backup_dir, stop_kwargs, crash=None, epochs=5, dtype=None):
    """Fits a fresh model with a backup; returns it, its callbacks."""
    x, y = data()
    trained = model(dtype)
    stop = keras.callbacks.EarlyStopping(monitor="loss", **stop_kwargs)
    record = EpochRecord()
    backup = GenerationBackup(backup_dir,
                              stateful_objects=stateful([record, stop]),
                              label="generation 1", fault_prefix="gen-1")
    callbacks = [crash] if crash else []
    trained.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
                callbacks=[*callbacks, record, stop, backup])
    return trained, record, backup


def weights(trained):
    return [w.numpy() for w in trained.weights + trained.optimizer.variables]


# bfloat16 variables (and EarlyStopping's best weights in bfloat16), which
# NumPy alone would store as opaque bytes that cannot be assigned back.
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_a_crashed_fit_resumes_to_the_uninterrupted_weights(tmp_path, dtype):
    patience = {"patience": 3, "restore_best_weights": True}
    reference, record, _ = fit(tmp_path / "reference", patience, dtype=dtype)
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path / "run", patience, crash=Crash(epoch=3), dtype=dtype)
    assert sorted(os.listdir(tmp_path / "run")) == ["epoch-0002",
                                                    "epoch-0003"]
    resumed, resumed_record, backup = fit(tmp_path / "run", patience,
                                          dtype=dtype)
    assert backup.restored_epochs == 3
    for a, b in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(a, b)
    resumed_history, history = resumed_record.history(), record.history()
    assert resumed_history.keys() == history.keys()
    for key in history:
        assert resumed_history[key] == pytest.approx(history[key]), key
    epochs = [e["epoch"] for e in resumed_record.entries]
    assert epochs == [e["epoch"] for e in record.entries]
    assert epochs[:4] == [0, 1, 2, 3]  # trained on past the crash


def test_early_stopping_that_fired_before_the_crash_still_restores(tmp_path):
    # mode="max" on a falling loss: no improvement, it stops after epoch 1
    # and restores the best (first) epoch's weights at the end of fit.
    stopping = {"patience": 1, "mode": "max", "restore_best_weights": True}
    reference, record, _ = fit(tmp_path / "reference", stopping)
    assert len(record.entries) == 2
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path / "run", stopping, crash=Crash(at_train_end=True))
    resumed, resumed_record, backup = fit(tmp_path / "run", stopping)
    assert backup.restored_epochs == 2
    assert len(resumed_record.entries) == 2  # nothing trained again
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_full_disk_keeps_the_last_good_backup(tmp_path, monkeypatch):
    patience = {"patience": 5}
    reference, _, _ = fit(tmp_path / "reference", patience)
    monkeypatch.setenv(faults.ENVIRONMENT_VARIABLE,
                       "gen-1/backup.write@2:enospc")
    monkeypatch.setattr(faults, "_counts", {})
    with pytest.raises(OSError) as error:
        fit(tmp_path / "run", patience)
    assert error.value.errno == errno.ENOSPC
    message = str(error.value)
    assert str(tmp_path / "run" / "epoch-0002") in message
    assert f"({tmp_path / 'run' / 'epoch-0001'}) is intact" in message
    assert sorted(os.listdir(tmp_path / "run")) == ["epoch-0001"]
    monkeypatch.delenv(faults.ENVIRONMENT_VARIABLE)
    resumed, _, restored = fit(tmp_path / "run", patience)
    assert restored.restored_epochs == 1
    for a, b in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(a, b)
