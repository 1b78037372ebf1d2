"""Image folders: one sub-folder per class, through Keras' own reader."""

import dataclasses
import numbers
import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from kdtrain import validation
from kdtrain.data.info import DataFormatError
from kdtrain.data.info import DatasetNotFoundError
from kdtrain.data.options import check_fraction
from kdtrain.data.options import check_path
from kdtrain.data.pipeline import assemble
from kdtrain.data.pipeline import info
from kdtrain.data.splits import plan_splits
from kdtrain.data.splits import split_counts
from kdtrain.data.splits import unknown_counts

# Image folder options, as `keras.utils.image_dataset_from_directory`
# takes them (`COLOR_MODES`: channels of each mode).
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
INTERPOLATIONS = (
    "bilinear",
    "nearest",
    "bicubic",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)


@dataclasses.dataclass(frozen=True)
class _FolderOptions:
    """Validated `"image_folder"` options."""

    directory: object
    image_size: tuple
    color_mode: str
    label_mode: object
    class_names: object
    num_classes: object
    interpolation: str
    crop_to_aspect_ratio: bool
    pad_to_aspect_ratio: bool
    follow_links: bool
    test_split: float
    cache: object  # True (memory), False or a file path (str)
    validate_images: bool

    @property
    def input_shape(self):
        return self.image_size + (COLOR_MODES[self.color_mode],)


def _check_image_size(image_size):
    if isinstance(image_size, numbers.Integral) and not isinstance(
        image_size, bool
    ):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (list, tuple))
        or len(image_size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
            for s in image_size
        )
    ):
        raise ValueError(
            "`image_size` must be (height, width) of positive ints. "
            f"Received: image_size={image_size!r}"
        )
    return image_size


def _check_class_names(class_names):
    if class_names is None:
        return None
    if (
        not isinstance(class_names, (list, tuple))
        or not all(isinstance(c, str) for c in class_names)
        or len(set(class_names)) != len(class_names)
    ):
        raise ValueError(
            "`class_names` must be a list of distinct class folder "
            f"names. Received: class_names={class_names!r}"
        )
    return tuple(class_names)


def _check_cache(cache):
    """True (in memory), False, or a file path."""
    if cache is not None and not isinstance(cache, (bool, str, os.PathLike)):
        raise ValueError(
            "`cache` must be True (in memory), False or a file path. "
            f"Received: cache={cache!r}"
        )
    if isinstance(cache, bool):
        return cache
    return (os.fspath(cache) if cache is not None else "") or False


def _image_folder_options(
    directory=None,
    image_size=(256, 256),
    color_mode="rgb",
    label_mode=None,
    class_names=None,
    num_classes=None,
    interpolation="bilinear",
    crop_to_aspect_ratio=False,
    pad_to_aspect_ratio=False,
    follow_links=False,
    test_split=0.2,
    cache=True,
    validate_images=True,
):
    if directory is None:
        raise ValueError('"image_folder" needs `directory=` (a folder path).')
    check_path("directory", directory)
    image_size = _check_image_size(image_size)
    if color_mode not in COLOR_MODES:
        raise ValueError(
            '`color_mode` must be one of "grayscale", "rgb", "rgba". '
            f"Received: color_mode={color_mode!r}"
        )
    if label_mode not in (None, "int", "binary"):
        raise ValueError(
            '`label_mode` must be None (auto), "int" or "binary" (kdtrain '
            "uses sparse integer labels; one-hot is not supported). "
            f"Received: label_mode={label_mode!r}"
        )
    class_names = _check_class_names(class_names)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError(
            "Only one of `crop_to_aspect_ratio` and `pad_to_aspect_ratio` "
            "can be True."
        )
    cache = _check_cache(cache)
    folder = _FolderOptions(
        directory=directory,
        image_size=tuple(int(s) for s in image_size),
        color_mode=color_mode,
        label_mode=label_mode,
        class_names=class_names,
        num_classes=validation.integer("num_classes", num_classes, 2,
                                       allow_none=True),
        interpolation=interpolation,
        crop_to_aspect_ratio=bool(crop_to_aspect_ratio),
        pad_to_aspect_ratio=bool(pad_to_aspect_ratio),
        follow_links=bool(follow_links),
        test_split=check_fraction("test_split", test_split),
        cache=cache,
        validate_images=bool(validate_images),
    )
    _static_label_format(folder)  # checks the class options agree
    return {"folder": folder}


def _folder_label_format(folder, num_classes, where, names=None):
    """Checks a class count against the options; returns the label format."""
    listed = f": {list(names)}" if names else ""
    if num_classes == 0:
        raise ValueError(
            f"{where} has no class sub-folders; an image folder needs one "
            "sub-folder of images per class."
        )
    if num_classes == 1:
        raise ValueError(
            f"{where} has a single class{listed}; classification needs at "
            "least 2 class sub-folders."
        )
    if folder.num_classes is not None and num_classes != folder.num_classes:
        raise ValueError(
            f"`num_classes={folder.num_classes}` but {where} has "
            f"{num_classes} classes{listed}."
        )
    if folder.label_mode == "binary" and num_classes != 2:
        raise ValueError(
            f'`label_mode="binary"` needs exactly 2 classes; {where} has '
            f"{num_classes}{listed}."
        )
    if folder.label_mode == "binary" or (
        folder.label_mode is None and num_classes == 2
    ):
        return "binary"
    return "sparse"


def _static_label_format(folder):
    """Label format from `class_names` / `num_classes`; None if unknown."""
    if folder.class_names is not None:
        return _folder_label_format(
            folder, len(folder.class_names), "`class_names`", folder.class_names
        )
    if folder.num_classes is not None:
        return _folder_label_format(folder, folder.num_classes, "`num_classes`")
    return None


def _folder_layout(root):
    """The source folders of each split: `{"train": path, ...}`."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" in subdirs:
        sources = {
            "train": subdirs["train"],
            "validation": subdirs.get("valid", subdirs.get("validation")),
            "test": subdirs.get("test"),
        }
        if sources["validation"] is not None or sources["test"] is not None:
            return {k: v for k, v in sources.items() if v is not None}
    return {"train": root}


def _class_folders(directory, folder):
    """Class names of a folder of class folders, checked; and label format.

    Lists the sub-folders as `keras.utils.image_dataset_from_directory`
    does (sorted, hidden ones skipped), or takes `class_names`.
    """
    subdirs = sorted(
        p.name
        for p in pathlib.Path(directory).iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    names = tuple(subdirs)
    if folder.class_names is not None:
        missing = [c for c in folder.class_names if c not in subdirs]
        if missing:
            raise ValueError(
                f"`class_names` {missing} are not sub-folders of {directory} "
                f"(found: {subdirs})."
            )
        names = folder.class_names
    where = f"Image folder {directory}"
    return names, _folder_label_format(folder, len(names), where, names)


def _validate_images(paths):
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:
            raise DataFormatError(
                f"Corrupt or unreadable image file {path}: "
                f"{type(e).__name__}: {e}"
            ) from e


def _image_stream(directory, names, label_format, folder):
    """Unbatched `(image, label)` of a class-folder tree, in sorted order.

    Images are listed, decoded and resized by
    `keras.utils.image_dataset_from_directory` (float32 in [0, 255]);
    `.file_paths` lists the files in the order of the elements.
    """
    return keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="binary" if label_format == "binary" else "int",
        class_names=list(names),
        color_mode=folder.color_mode,
        batch_size=None,
        image_size=folder.image_size,
        shuffle=False,  # a fixed order, to select the splits by index
        interpolation=folder.interpolation,
        follow_links=folder.follow_links,
        crop_to_aspect_ratio=folder.crop_to_aspect_ratio,
        pad_to_aspect_ratio=folder.pad_to_aspect_ratio,
        data_format="channels_last",
        verbose=False,
    )


def _to_uint8(x, y):
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y


def _select(stream, indices):
    """The elements of `stream` at the sorted `indices`, as uint8 images.

    Keras decodes each file of the folder before the filter drops it, so
    a split carved out of a folder costs one pass over the whole folder
    (once, when cached). Images are rounded to uint8 (as the files
    store them; only resizing's fractions are lost), a quarter of the
    cache size of Keras' float32.
    """
    count = len(stream.file_paths)
    ds = stream
    if len(indices) < count:
        mask = np.zeros(count, dtype=bool)
        mask[indices] = True
        keep = tf.constant(mask)
        ds = ds.enumerate().filter(lambda i, _: keep[i]).map(lambda _, e: e)
    return ds.map(_to_uint8, num_parallel_calls=tf.data.AUTOTUNE)


def _inspect_folder(folder):
    """Source folders, class names and label format of an image folder.

    Lists folders only; `None` if `folder.directory` does not exist.
    """
    root = pathlib.Path(folder.directory)
    if not root.is_dir():
        return None
    sources = _folder_layout(root)
    return (sources, *_class_folders(sources["train"], folder))


def _load_image_folder(common, *, folder):
    inspected = _inspect_folder(folder)
    if inspected is None:
        raise DatasetNotFoundError(f"Image folder not found: {folder.directory}")
    sources, names, label_format = inspected
    streams = {
        source: _image_stream(path, names, label_format, folder)
        for source, path in sources.items()
    }
    plan = plan_splits(
        common,
        {source: len(ds.file_paths) for source, ds in streams.items()},
        folder.test_split,
    )
    if folder.validate_images:
        for source, idx in plan.values():
            _validate_images([streams[source].file_paths[i] for i in idx])

    unbatched, raw = {}, {}
    for split, (source, idx) in plan.items():
        ds = _select(streams[source], idx)
        if folder.cache is True:
            ds = ds.cache()
        elif folder.cache:
            ds = ds.cache(f"{folder.cache}.{split}")
        unbatched[split] = ds
        if split == "train" and common.shuffle:
            # The folder order is sorted by class: a buffer of the whole
            # split shuffles fully, at no memory cost when cached in
            # memory (it holds the cache's tensors).
            buffer = len(idx) if folder.cache is True else min(len(idx), 8192)
            ds = ds.shuffle(buffer, seed=common.seed, reshuffle_each_iteration=True)
        raw[split] = ds.batch(common.batch_size)

    return assemble(
        "image_folder",
        common,
        raw,
        lambda: unbatched["train"].batch(256),
        value_max=255.0,
        counts=split_counts(plan),
        num_classes=len(names),
        input_shape=folder.input_shape,
        class_names=tuple(names),
        label_format=label_format,
    )


def _describe_image_folder(common, *, folder):
    inspected = _inspect_folder(folder)
    if inspected is not None:
        sources, names, label_format = inspected
        num_classes = len(names)
        has_validation = "validation" in sources
    else:
        label_format = _static_label_format(folder)
        if label_format is None:
            raise ValueError(
                f"Cannot describe image folder {folder.directory}: it is not "
                "here, so its number of classes is unknown. Pass "
                "num_classes= (or class_names=)."
            )
        names = folder.class_names or ()
        num_classes = len(names) or folder.num_classes
        has_validation = True  # unknown: there may be a valid/ folder
    return info(
        "image_folder",
        common,
        unknown_counts(common, has_validation),
        num_classes=num_classes,
        input_shape=folder.input_shape,
        class_names=tuple(names),
        label_format=label_format,
    )


IMAGE_FOLDER = (_image_folder_options, _load_image_folder,
                _describe_image_folder)
