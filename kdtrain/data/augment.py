"""Augmentation presets: Keras preprocessing layers for training batches."""

import keras

AUGMENT_PRESETS = ("cifar", "mnist", "skin_cancer")


def augmentation(preset, *, seed=None):
    """Returns the augmentation layers of a named preset.

    The presets reproduce the seed report's `ImageDataGenerator` settings
    with Keras preprocessing layers (`fill_mode="nearest"` as there):

    - `"cifar"`: rotation 20 degrees, width/height shift 0.2, horizontal
      flip.
    - `"skin_cancer"`: rotation 10 degrees, zoom 0.1, shift 0.2.
    - `"mnist"`: mild; rotation 10 degrees, shift 0.1, no flip, filled
      with zeros (the black background).

    Args:
        preset: One of `"cifar"`, `"mnist"`, `"skin_cancer"`.
        seed: Optional int seed of the random layers.

    Returns:
        A `keras.Sequential` of random image preprocessing layers.

    Example:

    >>> layers = augmentation("cifar", seed=0)
    >>> [type(layer).__name__ for layer in layers.layers]
    ['RandomRotation', 'RandomTranslation', 'RandomFlip']
    """
    L = keras.layers
    if preset == "cifar":
        layers = [
            L.RandomRotation(20 / 360, fill_mode="nearest", seed=seed),
            L.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed),
            L.RandomFlip("horizontal", seed=seed),
        ]
    elif preset == "skin_cancer":
        layers = [
            L.RandomRotation(10 / 360, fill_mode="nearest", seed=seed),
            L.RandomZoom(0.1, 0.1, fill_mode="nearest", seed=seed),
            L.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed),
        ]
    elif preset == "mnist":
        layers = [
            L.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            L.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
        ]
    else:
        raise ValueError(
            f"Unknown augmentation preset {preset!r}. Valid presets: "
            f"{', '.join(AUGMENT_PRESETS)}, or pass a list of Keras "
            "preprocessing layers or a keras.Sequential."
        )
    return keras.Sequential(layers, name=f"augment_{preset}")


def resolve_augment(augment, seed):
    if augment is None or augment is False:
        return None
    if isinstance(augment, str):
        return augmentation(augment, seed=seed)
    if isinstance(augment, (list, tuple)):
        if not augment:
            return None
        for layer in augment:
            if not callable(layer):
                raise ValueError(
                    "`augment` list items must be Keras layers. "
                    f"Received: {layer!r}"
                )
        return keras.Sequential(list(augment), name="augment")
    if callable(augment):
        return augment
    raise ValueError(
        "`augment` must be None, a preset name "
        f"({', '.join(AUGMENT_PRESETS)}), a list of Keras layers or a "
        f"keras.Sequential. Received: augment={augment!r}"
    )
