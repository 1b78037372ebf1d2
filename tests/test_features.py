import keras
import numpy as np
import pytest

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
