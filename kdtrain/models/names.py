"""The names of the built-in models, readable without TensorFlow.

The command line checks `--model` against them before TensorFlow loads;
`kdtrain.models.registry` builds from them.
"""

import re

WRN_PATTERN = "wrn-<depth>-<width>"
WRN_RE = re.compile(r"^wrn-(\d+)-(\d+)$")

# name: (the keras.applications constructor, its fixed arguments)
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", {}),
    "mobilenet_v3_small": ("MobileNetV3Small",
                           {"include_preprocessing": False}),
    "resnet50": ("ResNet50", {}),
    "efficientnet_v2_b0": ("EfficientNetV2B0",
                           {"include_preprocessing": False}),
}


def normalize_name(name):
    """A model name as the registry keys it (stripped, lower case)."""
    if not isinstance(name, str):
        raise ValueError(f"Model name must be a string. Received: {name!r}")
    return name.strip().lower()


def is_built_in(name):
    """Whether `name` is a Wide ResNet (`wrn-D-W`) or a built-in
    `keras.applications` family."""
    key = normalize_name(name)
    return bool(WRN_RE.match(key)) or key in APPLICATIONS


def built_in_names():
    """The names `is_built_in` accepts, the Wide ResNet as its pattern."""
    return [WRN_PATTERN] + sorted(APPLICATIONS)
