"""Mixed precision and XLA: the Distiller under Keras' dtype policies."""

import keras
import numpy as np
import pytest
from conftest import mlp

import kdtrain


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def distill(teacher, x, y, **compile_kwargs):
    student = mlp(32, seed=3)
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        distillation_loss=kdtrain.losses.KLDivergence(2.0),
        ground_truth_weight=0.5,
        metrics=["accuracy"],
        **compile_kwargs,
    )
    history = distiller.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return distiller, history.history


@pytest.fixture(scope="module")
def float32_accuracy(trained_teacher, digits):
    _, history = distill(trained_teacher, *digits)
    return history["accuracy"][-1]


@pytest.mark.parametrize(
    "policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_mixed_precision_trains_like_float32(
    policy, trained_teacher, digits, float32_accuracy
):
    x, y = digits
    distiller, history = distill(trained_teacher, x, y)
    assert distiller.student.layers[0].compute_dtype == policy.split("_")[1]
    # Loss scaling through Keras' own wrapper, only where float16 needs it.
    scaled = isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    # Losses are computed in float32 from the half-precision outputs.
    outputs = distiller.student(x[:32])
    assert keras.backend.standardize_dtype(outputs.dtype) == policy.split("_")[1]
    loss = distiller.compute_distillation_loss(
        y[:32], distiller.teacher_logits(x[:32]), outputs
    )
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    for key in ("loss", "distillation_loss", "ground_truth_loss"):
        assert np.all(np.isfinite(history[key])), key
    assert history["accuracy"][-1] > 0.8
    assert abs(history["accuracy"][-1] - float32_accuracy) < 0.05


def test_jit_compile_passes_through(trained_teacher, digits):
    x, y = digits
    distiller, history = distill(trained_teacher, x[:512], y[:512],
                                 jit_compile=True)
    assert distiller.jit_compile is True
    assert np.all(np.isfinite(history["loss"]))
