"""Tests for kdtrain.models: WideResNet and the model registry."""

import keras
import numpy as np
import pytest

from kdtrain import models
from kdtrain.models import registry
from kdtrain.models import wide_resnet


def expected_wrn_params(num_classes, depth, width, channels=3):
    """Parameter count of a WRN, derived from the paper's architecture.

    Convolutions have no bias; every BN holds 4 values per channel (gamma,
    beta, moving mean, moving variance); 1x1 projection shortcuts appear
    wherever the number of filters or the stride changes.
    """
    n = (depth - 4) // 6
    total = 3 * 3 * channels * 16  # stem
    in_f = 16
    for out_f, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for block in range(n):
            s = stride if block == 0 else 1
            total += 4 * in_f + 9 * in_f * out_f  # bn_1, conv_1
            total += 4 * out_f + 9 * out_f * out_f  # bn_2, conv_2
            if in_f != out_f or s != 1:
                total += in_f * out_f  # 1x1 projection
            in_f = out_f
    total += 4 * in_f  # head bn
    total += in_f * num_classes + num_classes  # dense
    return total


# (depth, width, millions of parameters reported by Zagoruyko & Komodakis)
PAPER_COUNTS = [
    (28, 10, 36.5),
    (16, 8, 11.0),
    (40, 4, 8.9),
    (16, 4, 2.7),
    (28, 1, 0.37),
]


@pytest.mark.parametrize("depth,width,millions", PAPER_COUNTS)
def test_parameter_counts_match_paper(depth, width, millions):
    model = models.WideResNet(10, depth, width, input_shape=(32, 32, 3))
    count = model.count_params()
    assert count == expected_wrn_params(10, depth, width)
    # The paper rounds to 2-3 significant digits. WRN-16-4 has 2.75M
    # parameters (2.745M without BN), which the paper prints as 2.7M: 1.9%
    # off, so that one row gets a 2% tolerance.
    tolerance = 0.02 if (depth, width) == (16, 4) else 0.01
    assert abs(count - millions * 1e6) <= tolerance * millions * 1e6


def test_group_layers_names_and_shapes():
    model = models.WideResNet(10, 16, 2, input_shape=(32, 32, 3))
    shapes = {
        name: tuple(model.get_layer(name).output.shape)
        for name in ("group_1", "group_2", "group_3")
    }
    assert shapes == {
        "group_1": (None, 32, 32, 32),
        "group_2": (None, 16, 16, 64),
        "group_3": (None, 8, 8, 128),
    }
    for name in shapes:
        assert isinstance(model.get_layer(name), keras.layers.Add)
    # 16 = 6 * 2 + 4: two blocks per group, 3 * 2 * 2 convs + stem.
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    shortcuts = [l for l in convs if l.name.endswith("_shortcut")]
    assert [l.name for l in shortcuts] == [
        "group_1_block_1_shortcut",
        "group_2_block_1_shortcut",
        "group_3_block_1_shortcut",
    ]
    assert len(convs) == 1 + 3 * 2 * 2 + 3
    assert all(not l.use_bias for l in convs)


def test_width_one_has_identity_shortcut_in_group_1():
    model = models.WideResNet(10, 10, 1, input_shape=(16, 16, 1))
    names = {layer.name for layer in model.layers}
    assert "group_1_block_1_shortcut" not in names
    assert "group_2_block_1_shortcut" in names
    assert tuple(model.get_layer("group_3").output.shape) == (None, 4, 4, 64)


def test_output_heads():
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype="float32")
    logits = models.WideResNet(4, 10, 1, input_shape=(8, 8, 1))
    assert logits.layers[-1].name == "logits"
    assert isinstance(logits.layers[-1], keras.layers.Dense)

    softmax = models.WideResNet(4, 10, 1, input_shape=(8, 8, 1), output="softmax")
    last = softmax.layers[-1]
    assert isinstance(last, keras.layers.Activation)
    assert last.name == "probabilities"
    probs = softmax.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The probabilities are the softmax of the "logits" layer.
    sub = keras.Model(softmax.input, softmax.get_layer("logits").output)
    z = sub.predict(x, verbose=0)
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(probs, ref / ref.sum(1, keepdims=True), atol=1e-5)

    sigmoid = models.WideResNet(1, 10, 1, input_shape=(8, 8, 1), output="sigmoid")
    out = sigmoid.predict(x, verbose=0)
    assert out.shape == (3, 1)
    assert np.all((out > 0) & (out < 1))


def test_dropout_and_weight_decay():
    model = models.WideResNet(
        10, 16, 1, input_shape=(8, 8, 3), dropout=0.3, weight_decay=5e-4
    )
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drops) == 6 and all(l.rate == 0.3 for l in drops)
    kernels = [
        l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(model.losses) == len(kernels)
    expected = sum(5e-4 * np.sum(np.square(l.kernel.numpy())) for l in kernels)
    np.testing.assert_allclose(
        float(sum(keras.ops.convert_to_numpy(v) for v in model.losses)),
        expected,
        rtol=1e-4,
    )
    plain = models.WideResNet(10, 16, 1, input_shape=(8, 8, 3))
    assert not plain.losses
    assert not any(isinstance(l, keras.layers.Dropout) for l in plain.layers)


def test_keras_round_trip(tmp_path):
    model = models.WideResNet(
        5, 10, 2, input_shape=(12, 12, 3), dropout=0.2, output="softmax",
        weight_decay=1e-4, name="teacher",
    )
    # Move BN statistics away from their initial values.
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    model.fit(
        rng.random((8, 12, 12, 3), dtype="float32"),
        rng.integers(0, 5, 8),
        epochs=1,
        verbose=0,
    )
    path = tmp_path / "wrn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True by default
    assert type(loaded) is models.WideResNet
    assert loaded.name == "teacher"
    assert loaded.get_config() == model.get_config()
    x = rng.random((4, 12, 12, 3), dtype="float32")
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert loaded.get_layer("group_2") is not None


def downsampling_branches(model, block="group_2_block_1"):
    """A model from a block's pre-activated input to its two branches'
    strided convolutions: `(1x1 shortcut, first 3x3 convolution)`."""
    pre = model.get_layer(f"{block}_1_relu").output
    return keras.Model(pre, [model.get_layer(f"{block}_shortcut").output,
                             model.get_layer(f"{block}_conv_1").output])


# Keras' "same" pads an even size only bottom and right, an odd one on both
# sides; both must come out aligned.
@pytest.mark.parametrize("size", [8, 9])
def test_downsampling_branches_sample_the_same_pixels(size):
    model = models.WideResNet(3, 10, 1, input_shape=(None, None, 1))
    branches = downsampling_branches(model)
    # Both branches reduced to copying input channel 0: the shortcut's 1x1
    # kernel, and the center tap of the 3x3 kernel.
    shortcut = np.zeros((1, 1, 16, 32), "float32")
    shortcut[0, 0, 0] = 1.0
    center = np.zeros((3, 3, 16, 32), "float32")
    center[1, 1, 0] = 1.0
    model.get_layer("group_2_block_1_shortcut").kernel.assign(shortcut)
    model.get_layer("group_2_block_1_conv_1").kernel.assign(center)
    # One impulse image per pixel.
    images = np.zeros((size * size, size, size, 16), "float32")
    rows, cols = np.divmod(np.arange(size * size), size)
    images[np.arange(size * size), rows, cols, 0] = 1.0
    a, b = (keras.ops.convert_to_numpy(t) for t in branches(images))
    half = (size + 1) // 2
    assert a.shape == b.shape == (size * size, half, half, 32)
    np.testing.assert_array_equal(a, b)
    # Each branch samples the even pixels: (2i, 2j) -> (i, j).
    expected = np.zeros_like(a)
    even = (rows % 2 == 0) & (cols % 2 == 0)
    expected[np.flatnonzero(even), rows[even] // 2, cols[even] // 2] = 1.0
    np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("size", [8, 9])
def test_strided_convolutions_pad_symmetrically(size):
    """The branches against PyTorch's `Conv2d(3, stride=2, padding=1)` and
    `Conv2d(1, stride=2)`, written out in NumPy."""
    model = models.WideResNet(3, 10, 1, input_shape=(None, None, 1))
    branches = downsampling_branches(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, size, size, 16)).astype("float32")
    w1 = model.get_layer("group_2_block_1_shortcut").kernel.numpy()
    w3 = model.get_layer("group_2_block_1_conv_1").kernel.numpy()
    half = (size + 1) // 2
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((2, half, half, 32))
    for i in range(half):
        for j in range(half):
            window = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            conv[:, i, j] = np.einsum("nabc,abcd->nd", window, w3)
    shortcut = x[:, ::2, ::2] @ w1[0, 0]
    a, b = (keras.ops.convert_to_numpy(t) for t in branches(x))
    np.testing.assert_allclose(a, shortcut, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b, conv, rtol=1e-4, atol=1e-4)


def test_batch_normalization_follows_the_authors():
    model = models.WideResNet(3, 10, 1, input_shape=(8, 8, 1))
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 3 * 2 * 1 + 1  # two per block, and the head's
    assert {(n.momentum, n.epsilon) for n in norms} == {(0.9, 1e-5)}
    custom = models.WideResNet(3, 10, 1, input_shape=(8, 8, 1),
                               bn_momentum=0.5, bn_epsilon=1e-3)
    assert {
        (layer.momentum, layer.epsilon) for layer in custom.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    } == {(0.5, 1e-3)}


def test_a_configuration_without_the_new_keys_loads_as_it_was_saved(tmp_path):
    """A `.keras` file whose config lacks padding and batch-normalization
    settings is rebuilt with Keras' padding and defaults, and computes as
    the model it was saved from."""
    import json
    import zipfile

    keras.utils.set_random_seed(2)
    model = models.WideResNet(3, 10, 1, input_shape=(8, 8, 1),
                              padding="same", bn_momentum=0.99,
                              bn_epsilon=1e-3)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(
                rng.uniform(0.01, 2.0, layer.moving_variance.shape)
            )
    model.save(tmp_path / "saved.keras")
    with zipfile.ZipFile(tmp_path / "saved.keras") as source, zipfile.ZipFile(
        tmp_path / "stripped.keras", "w"
    ) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                for key in ("padding", "bn_momentum", "bn_epsilon"):
                    del config["config"][key]
                data = json.dumps(config).encode()
            target.writestr(item, data)
    loaded = keras.saving.load_model(tmp_path / "stripped.keras")
    assert loaded.get_config() == model.get_config()
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D)
                   for layer in loaded.layers)
    x = rng.random((4, 8, 8, 1), dtype="float32")
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    # The new defaults would compute something else from these weights.
    current = models.WideResNet(3, 10, 1, input_shape=(8, 8, 1))
    current.set_weights(model.get_weights())
    assert np.abs(current.predict(x, verbose=0)
                  - model.predict(x, verbose=0)).max() > 1e-3


def test_variable_spatial_size():
    model = models.WideResNet(3, 10, 1, input_shape=(None, None, 3))
    for size in (4, 9, 32):
        out = model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)
        assert out.shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(depth=15), r"valid depths are 10, 16, 22, 28, 34, 40"),
        (dict(depth=4), r"valid depths are 10, 16"),
        (dict(depth=0), r"`depth` must be a positive integer.*depth=0"),
        (dict(width=0), r"`width` must be a positive integer.*width=0"),
        (dict(width=1.5), r"`width` must be a positive integer.*width=1.5"),
        (dict(num_classes=-2), r"`num_classes`.*num_classes=-2"),
        (dict(input_shape=(3, 32, 3)), r"height 3 is too small.*at least 4"),
        (dict(input_shape=(32, 2, 1)), r"width 2 is too small"),
        (dict(input_shape=(32, 32)), r"3-tuple"),
        (dict(input_shape=(32, 32, None)), r"channel dimension"),
        (dict(output="relu"), r"`output` must be one of"),
        (dict(output="sigmoid"), r"num_classes=1"),
        (dict(dropout=1.0), r"`dropout` must be a float in \[0, 1\)"),
        (dict(weight_decay=-1.0), r"`weight_decay` must be a non-negative"),
        (dict(padding="valid"), r"`padding` must be one of"),
        (dict(bn_momentum=1.0), r"`bn_momentum` must be a float in \[0, 1\)"),
        (dict(bn_epsilon=0.0), r"`bn_epsilon` must be a positive float"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(num_classes=10, depth=16, width=1, input_shape=(32, 32, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        models.WideResNet(**args)


def test_build_wrn_parses_name_and_kwargs():
    model = models.build(
        "WRN-16-2", num_classes=7, input_shape=(16, 16, 3), dropout=0.1,
        output="softmax",
    )
    assert isinstance(model, models.WideResNet)
    assert (model.depth, model.width, model.num_classes) == (16, 2, 7)
    assert model.dropout == 0.1
    assert model.layers[-1].name == "probabilities"
    assert model.count_params() == expected_wrn_params(7, 16, 2)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mobilenet_v2", dict(alpha=0.35)),
        ("mobilenet_v3_small", dict(alpha=0.75)),
        ("resnet50", {}),
        ("efficientnet_v2_b0", {}),
    ],
)
def test_build_applications(name, kwargs):
    assert name in models.available()
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32")
    logits = models.build(
        name, num_classes=3, input_shape=(32, 32, 3), output="logits", **kwargs
    )
    assert logits.output_shape == (None, 3)
    out = keras.ops.convert_to_numpy(logits(x, training=False))
    # Logit heads are not normalized.
    assert not np.allclose(out.sum(axis=1), 1.0)
    softmax = models.build(
        name, num_classes=3, input_shape=(32, 32, 3), output="softmax", **kwargs
    )
    probs = keras.ops.convert_to_numpy(softmax(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_build_never_downloads(monkeypatch):
    def forbid(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(keras.utils, "get_file", forbid)
    model = models.build(
        "mobilenet_v2", num_classes=2, input_shape=(32, 32, 3), alpha=0.35
    )
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize(
    "input_shape,message",
    [
        ((28, 28, 1), r"needs height and width of at least 32|3-channel"),
        ((32, 32, 1), r"needs 3-channel input"),
        ((16, 64, 3), r"at least 32"),
        ((None, None, 3), r"fully known input_shape"),
    ],
)
def test_build_application_bad_input(input_shape, message):
    with pytest.raises(ValueError, match=message):
        models.build("mobilenet_v2", num_classes=3, input_shape=input_shape)


def test_build_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"Unknown model name 'vgg99'.*wrn-<depth>-<width>.*mobilenet_v2"):
        models.build("vgg99", num_classes=3, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"valid depths"):
        models.build("wrn-15-1", num_classes=3, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"`output` must be one of"):
        models.build("wrn-10-1", num_classes=3, input_shape=(32, 32, 3), output="prob")


def test_register_custom_builder(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    calls = []

    def tiny(*, num_classes, input_shape, output="logits", units=4):
        calls.append((num_classes, tuple(input_shape), output, units))
        inputs = keras.Input(input_shape)
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(units)(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

    models.register("Tiny_MLP", tiny)
    assert "tiny_mlp" in models.available()
    model = models.build("tiny_mlp", num_classes=2, input_shape=(4, 4, 1), units=3)
    assert model.output_shape == (None, 2)
    assert calls == [(2, (4, 4, 1), "logits", 3)]
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_mlp", tiny)
    models.register("tiny_mlp", tiny, overwrite=True)
    with pytest.raises(ValueError, match="reserved"):
        models.register("wrn-10-1", tiny)
    with pytest.raises(ValueError, match="callable"):
        models.register("other", 3)


def test_available_lists_families():
    names = models.available()
    assert names[0] == "wrn-<depth>-<width>"
    assert wide_resnet.GROUP_NAMES == ("group_1", "group_2", "group_3")
    for name in ("mobilenet_v2", "resnet50", "efficientnet_v2_b0", "mobilenet_v3_small"):
        assert name in names
