import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdtrain import losses
from kdtrain.features import feature_model
from kdtrain.models import WideResNet

RNG = np.random.default_rng(0)


def np_attention(features, p=2.0):
    energy = (np.abs(features) ** p).mean(axis=-1).reshape(len(features), -1)
    return energy / np.linalg.norm(energy, axis=-1, keepdims=True)


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_maps_match_numpy(p):
    features = RNG.normal(size=(3, 5, 4, 6)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(losses.attention_map(features, p)),
        np_attention(features, p), rtol=1e-5,
    )


def test_attention_transfer_loss_matches_numpy():
    student = RNG.normal(size=(4, 8, 8, 16)).astype("float32")
    teacher = RNG.normal(size=(4, 8, 8, 32)).astype("float32")  # channels differ
    loss = losses.AttentionTransfer(["group_1"], p=2)
    # Half the mean squared map difference: `weight` is the paper's beta.
    expected = 0.5 * ((np_attention(student) - np_attention(teacher)) ** 2).mean(-1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss.call(teacher, student)), expected,
        rtol=1e-5,
    )
    assert np.allclose(keras.ops.convert_to_numpy(loss.call(teacher, teacher)), 0)


def test_hint_loss_is_the_mean_squared_difference():
    student = RNG.normal(size=(4, 3, 3, 8)).astype("float32")
    teacher = RNG.normal(size=(4, 3, 3, 8)).astype("float32")
    expected = ((student - teacher) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(losses.HintLoss("x").call(teacher, student)),
        expected, rtol=1e-5,
    )


def test_layer_specifications():
    assert losses.AttentionTransfer("a").layers == (("a", "a"),)
    assert losses.AttentionTransfer(["a", ("b", "c")]).layers == (
        ("a", "a"), ("b", "c")
    )
    for bad in ([], [("a",)], [3], None):
        with pytest.raises(ValueError, match="layer"):
            losses.AttentionTransfer(bad)
    for weight in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="weight"):
            losses.HintLoss("a", weight=weight)
    with pytest.raises(ValueError, match="`p`"):
        losses.AttentionTransfer("a", p=0)


def test_attention_transfer_needs_equal_spatial_sizes():
    loss = losses.AttentionTransfer("g")
    loss.check_shapes((None, 8, 8, 16), (None, 8, 8, 64), ("g", "g"))
    with pytest.raises(ValueError, match=r"same spatial size.*\(8, 8\).*\(4, 4\)"):
        loss.check_shapes((None, 8, 8, 16), (None, 4, 4, 16), ("g", "g"))
    with pytest.raises(ValueError, match="spatial feature maps"):
        loss.check_shapes((None, 16), (None, 16), ("d", "d"))


def test_hint_adapter_maps_channels_only():
    loss = losses.HintLoss("g")
    loss.check_shapes((None, 8, 8, 16), (None, 8, 8, 64), ("g", "g"))
    with pytest.raises(ValueError, match="cannot map"):
        loss.check_shapes((None, 8, 8, 16), (None, 4, 4, 64), ("g", "g"))
    with pytest.raises(ValueError, match="cannot map"):
        loss.check_shapes((None, 8, 8, 16), (None, 64), ("g", "g"))


@pytest.mark.parametrize(
    "loss",
    [losses.AttentionTransfer(["a", ("b", "c")], p=3, weight=10),
     losses.HintLoss([("s", "t")], weight=0.5)],
)
def test_feature_losses_serialize(loss):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()


def test_feature_model_of_a_wide_resnet():
    model = WideResNet(10, 10, 1, input_shape=(16, 16, 3))
    extractor = feature_model(model, ["group_1", "group_2", "group_3"], "teacher")
    x = RNG.normal(size=(2, 16, 16, 3)).astype("float32")
    logits, *groups = extractor(x)
    assert [tuple(g.shape) for g in groups] == [(2, 16, 16, 16), (2, 8, 8, 32),
                                                (2, 4, 4, 64)]
    np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-6)
    assert extractor.layers[1].kernel is model.layers[1].kernel  # shared


def test_feature_model_of_a_sequential():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(2)])
    _, hidden = feature_model(model, ["hidden"], "student")(np.ones((1, 6)))
    assert tuple(hidden.shape) == (1, 4)


def test_unknown_layer_names_list_the_layers():
    model = WideResNet(10, 10, 1, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"no layer 'group_4'.*group_3"):
        feature_model(model, ["group_4"], "student")


def test_subclassed_model_layers_cannot_be_reached():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4, name="hidden")
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.hidden(x))

    model = Subclassed()
    model(np.ones((1, 6)))
    with pytest.raises(ValueError, match="subclassed model"):
        feature_model(model, ["hidden"], "student")


# Through the Distiller and the runner ------------------------------------------

import kdtrain  # noqa: E402


@pytest.fixture(scope="module")
def images(digits):
    x, y = digits
    return x.reshape(-1, 8, 8, 1)[:256], y[:256]


def wrn(seed, width=1):
    keras.utils.set_random_seed(seed)
    return WideResNet(10, 10, width, input_shape=(8, 8, 1))


def test_attention_transfer_is_logged_as_its_weighted_part_of_the_loss(images):
    x, y = images
    teacher, student = wrn(0), wrn(1)
    groups = ["group_1", "group_2", "group_3"]
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        feature_losses=[losses.AttentionTransfer(groups, weight=1000.0)],
    )
    logs = distiller.fit(x, y, batch_size=64, epochs=1, shuffle=False,
                         verbose=0).history
    # The reference: numpy maps of each model's group outputs, batch by
    # batch, the student in training mode (batch statistics) as in fit.
    student_features = feature_model(student, groups, "s")
    teacher_features = feature_model(teacher, groups, "t")
    per_sample = []
    for start in range(0, len(x), 64):
        batch = x[start:start + 64]
        s_maps = student_features(batch, training=True)[1:]
        t_maps = teacher_features(batch, training=False)[1:]
        per_sample.append(sum(
            0.5 * ((np_attention(np.asarray(s)) - np_attention(np.asarray(t)))
                   ** 2).mean(-1)
            for s, t in zip(s_maps, t_maps)
        ))
    expected = np.concatenate(per_sample).mean()
    np.testing.assert_allclose(logs["attention_transfer"][0], expected, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"][0], logs["distillation_loss"][0] + 1000.0 * expected,
        rtol=1e-4,
    )


def test_hint_loss_falls_and_trains_an_adapter_outside_the_student(
    images, tmp_path
):
    x, y = images
    teacher, student = wrn(2, width=2), wrn(3)
    bare_parameters = student.count_params()
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01), distillation_loss=None,
        feature_losses=[losses.HintLoss([("group_2", "group_2")])],
    )
    (adapter,) = distiller.hint_adapters
    # 16 -> 32 channels: WRN-10-1's group_2 has 32 filters, WRN-10-2's 64.
    assert tuple(adapter.kernel.shape) == (1, 1, 32, 64)
    before = adapter.kernel.numpy().copy()
    history = distiller.fit(x, epochs=4, batch_size=32, verbose=0).history
    assert set(history) == {"loss", "hint"}  # unlabeled, no output loss
    assert history["hint"][-1] < 0.7 * history["hint"][0]
    assert not np.allclose(adapter.kernel.numpy(), before)
    for old, new in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert student.count_params() == bare_parameters
    student.save(tmp_path / "student.keras")
    restored = keras.saving.load_model(tmp_path / "student.keras")
    assert restored.count_params() == bare_parameters
    assert not any("adapter" in w.path for w in restored.weights)


def test_bad_feature_layers_are_refused_at_compile(images):
    teacher, student = wrn(4), wrn(5)
    distiller = kdtrain.Distiller(student, teacher)
    with pytest.raises(ValueError, match=r"no layer 'group_9'.*group_1"):
        distiller.compile(feature_losses=[losses.AttentionTransfer("group_9")])
    with pytest.raises(ValueError, match="same spatial size"):
        distiller.compile(
            feature_losses=[losses.AttentionTransfer([("group_1", "group_2")])]
        )
    with pytest.raises(ValueError, match="cannot map"):
        distiller.compile(
            feature_losses=[losses.HintLoss([("group_1", "group_3")])]
        )
    with pytest.raises(ValueError, match="FeatureLoss"):
        distiller.compile(feature_losses=[losses.SoftTargets()])
    with pytest.raises(ValueError, match="Nothing to learn"):
        distiller.compile(distillation_loss=None)


def test_a_two_generation_chain_with_attention_transfer(images, tmp_path):
    x, y = images
    runner = kdtrain.GenerationRunner(
        lambda: WideResNet(10, 10, 1, input_shape=(8, 8, 1)),
        generations=2,
        feature_losses=[losses.AttentionTransfer(["group_1", "group_2", "group_3"])],
        directory=tmp_path / "chain", seed=0, progress=False,
        tensorboard=False, verbose=0,
    )
    result = runner.run((x[:192], y[:192]), test_data=(x[192:], y[192:]),
                        epochs=2, batch_size=32)
    assert [row["label"] for row in result.table] == [
        "Teacher", "BAN-1", "BAN-2", "Ensemble", "Ensemble + teacher"
    ]
    for name in ("gen-1", "gen-2"):
        transfer = result.histories[name].history["attention_transfer"]
        assert len(transfer) == 2 and all(np.isfinite(transfer))
        assert (tmp_path / "chain" / name / "model.keras").is_file()
    # Each generation's exported model is a bare WRN-10-1.
    assert result.models[2].count_params() == result.models[0].count_params()
    with pytest.raises(ValueError, match="intermediate outputs"):
        kdtrain.GenerationRunner(
            lambda: WideResNet(10, 10, 1, input_shape=(8, 8, 1)),
            feature_losses=[losses.AttentionTransfer("group_1")],
            cache_teacher=True,
        ).run((x, y), epochs=1)


def dense_pair():
    """A teacher (8 hidden units, logits) and a student (4) with layer "h"."""
    def net(seed, hidden):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(hidden, activation="relu", name="h"),
            keras.layers.Dense(3, name="out"),
        ])

    return net(6, 8), net(7, 4)


def hand_written_hint_step(teacher, student, adapter, x, learning_rate,
                           temperature):
    """One SGD step on KL·T² + hint by hand; returns the updated weights."""
    t1, t2, t3, t4 = [tf.constant(w) for w in teacher.get_weights()]
    variables = [tf.Variable(w) for w in
                 student.get_weights() + adapter.get_weights()]
    x = tf.constant(x)
    teacher_hidden = tf.nn.relu(x @ t1 + t2)
    log_p = tf.nn.log_softmax((teacher_hidden @ t3 + t4) / temperature)
    with tf.GradientTape() as tape:
        s1, s2, s3, s4, a1, a2 = variables
        hidden = tf.nn.relu(x @ s1 + s2)
        log_q = tf.nn.log_softmax((hidden @ s3 + s4) / temperature)
        kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1)
        hint = tf.reduce_mean(tf.square(hidden @ a1 + a2 - teacher_hidden), -1)
        loss = tf.reduce_mean(kl * temperature**2 + hint)
    gradients = tape.gradient(loss, variables)
    return [(v - learning_rate * g).numpy()
            for v, g in zip(variables, gradients)]


def test_recompiling_drops_the_previous_hint_adapters():
    """After any recompile, the trainable variables are the student's and the
    current adapters', the optimizer has slots for them alone, `fit` warns
    about no missing gradient, and a step is the hand-written one."""
    teacher, student = dense_pair()
    x = RNG.normal(size=(16, 6)).astype("float32")
    y = np.arange(16) % 3
    distiller = kdtrain.Distiller(student, teacher)
    hints = {"hint": lambda: [losses.HintLoss("h")], "none": lambda: []}
    dropped = []
    for step, kind in enumerate(["hint", "hint", "none", "hint", "none"]):
        # One step from zero momentum is plain SGD; the momenta are slots.
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        distiller.compile(optimizer=optimizer,
                          distillation_loss=losses.KLDivergence(4.0),
                          feature_losses=hints[kind]())
        adapters = list(distiller.hint_adapters)
        assert len(adapters) == (kind == "hint")
        expected = student.trainable_variables + [
            v for adapter in adapters for v in adapter.trainable_variables
        ]
        assert [id(v) for v in distiller.trainable_variables] == [
            id(v) for v in expected
        ], step
        names = [metric.name for metric in distiller.metrics]
        assert names.count("hint") == len(adapters)
        before = [w.copy() for a in dropped for w in a.get_weights()]
        reference = (hand_written_hint_step(teacher, student, adapters[0], x,
                                            0.1, 4.0) if adapters else None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = distiller.fit(x, y, batch_size=16, epochs=1,
                                    shuffle=False, verbose=0).history
        assert not [str(w.message) for w in caught], step
        assert ("hint" in history) == bool(adapters)
        fresh = keras.optimizers.SGD(0.1, momentum=0.9)
        fresh.build(expected)
        assert len(optimizer.variables) == len(fresh.variables), step
        # Dropped adapters no longer train; the step is the hand-written one.
        after = [w for adapter in dropped for w in adapter.get_weights()]
        for old, new in zip(before, after):
            np.testing.assert_array_equal(old, new)
        if reference is not None:
            trained = student.get_weights() + adapters[0].get_weights()
            for actual, wanted in zip(trained, reference):
                np.testing.assert_allclose(actual, wanted, rtol=1e-5,
                                           atol=1e-7)
        dropped.extend(adapters)
    # An optimizer built for earlier variables refuses new adapters (Keras).
    distiller.compile(optimizer=optimizer, distillation_loss="kl",
                      feature_losses=[losses.HintLoss("h")])
    with pytest.raises(ValueError, match="recreate a new optimizer"):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
