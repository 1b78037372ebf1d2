"""A chain's plan: every argument of `run` checked before anything happens.

`make_plan` validates the data, builds throwaway models to check
`build_model` (and `build_teacher`, the feature losses' layers, the labels
against the output units) and computes the configuration that identifies
the chain. It trains nothing and writes nothing.
"""

import dataclasses
import hashlib

import keras

from kdtrain import validation

from kdtrain.cache import weights_fingerprint
from kdtrain.chain.config import architecture_fingerprint
from kdtrain.chain.config import describe_callbacks
from kdtrain.chain.config import normalize
from kdtrain.chain.config import strip_names
from kdtrain.chain.models import output_shape
from kdtrain.chain.splits import DataSplit
from kdtrain.features import plan_feature_losses
from kdtrain.outputs import label_format
from kdtrain.pipelines import is_stateless_augmentation

_RESERVED_FIT_ARGUMENTS = (
    "x", "y", "epochs", "initial_epoch", "callbacks", "validation_data",
    "batch_size", "sample_weight",
)


@dataclasses.dataclass
class ChainPlan:
    """What a chain will do, checked.

    Attributes:
        train: The training `DataSplit`.
        validation: The validation `DataSplit`, or None.
        evaluation_splits: The splits of the table, by name.
        epochs: Epochs per student generation.
        teacher_epochs: Epochs of a teacher trained here.
        callbacks: The user's callbacks (a list or a function).
        fit_kwargs: Other `fit` arguments.
        sample_x: A few training inputs.
        classes: Units of the models' output.
        label_format: `"sparse"`, `"binary"` or `"categorical"`.
        cache: Whether students train from cached teacher outputs.
        shuffle: Whether training reshuffles the samples every epoch.
        config: The configuration that identifies the chain.
        first: The first generation trained here (1 with a given teacher).
        training_arrays: The training split read into `TrainingArrays`
            when the runner's own pipeline trains on it (for the cache, a
            deterministic order or `augmentation`) or it came as arrays,
            else None.
        augmentation: Random image layers the runner applies to training
            batches, or None.
    """

    train: DataSplit
    validation: object
    evaluation_splits: dict
    epochs: int
    teacher_epochs: object
    callbacks: object
    fit_kwargs: dict
    sample_x: object
    classes: int
    label_format: str
    cache: bool
    shuffle: bool
    config: dict
    first: int
    training_arrays: object = None
    augmentation: object = None


def _check_epochs(epochs, teacher_epochs):
    validation.integer("epochs", epochs, 1)
    validation.integer("teacher_epochs", teacher_epochs, 1, allow_none=True)


def _check_fit_kwargs(fit_kwargs, deterministic):
    for key in _RESERVED_FIT_ARGUMENTS:
        if key in fit_kwargs:
            raise ValueError(
                f"`{key}` is not a fit argument of run(); see its "
                "arguments (train_data, validation_data, epochs, "
                "callbacks, batch_size)."
            )
    if deterministic and fit_kwargs.get("steps_per_epoch") is not None:
        raise ValueError(
            "deterministic=True orders every epoch itself; `steps_per_epoch` "
            "would carry one order across epochs. Leave it out."
        )


def _splits(train_data, validation_data, test_data, batch_size):
    splits = {"train": DataSplit(train_data, batch_size, "train_data")}
    for name, data in (("validation", validation_data), ("test", test_data)):
        if data is not None:
            splits[name] = DataSplit(data, batch_size, f"{name}_data")
    return splits


def _check_label_presence(runner, splits):
    reasons = []
    if runner.teacher is None:
        reasons.append("generation 0 (the teacher) is trained on them")
    if runner.ground_truth_weight > 0:
        reasons.append(f"ground_truth_weight is {runner.ground_truth_weight}")
    loss = runner.distillation_loss
    if loss is not None and loss.uses_labels:
        reasons.append(f"the loss {type(loss).__name__} reads them")
    if reasons and not splits["train"].has_labels:
        raise ValueError(
            "`train_data` carries no labels, but " + " and ".join(reasons)
            + ". Pass (x, y) data, or a trained `teacher` with "
            "ground_truth_weight=0 and a loss without labels."
        )
    for name in ("validation", "test"):
        if name in splits and not splits[name].has_labels:
            raise ValueError(
                f"`{name}_data` must carry labels: the models are "
                "evaluated on it."
            )


def _use_cache(runner, train, augmentation):
    """Whether students train from cached teacher outputs."""
    if runner.cache_teacher is False:
        return False
    if augmentation is not None:
        if runner.cache_teacher is True:
            raise ValueError(
                "cache_teacher=True, but `augmentation` changes the images "
                "every epoch: the teacher must see the same augmented batch "
                "as the student (Beyer et al. 2021). Pass cache_teacher="
                "'auto' or False."
            )
        return False
    if runner.feature_losses:
        if runner.cache_teacher is True:
            raise ValueError(
                "cache_teacher=True, but feature losses compare the "
                "teacher's intermediate outputs, which only an online "
                "teacher gives. Pass cache_teacher='auto' or False."
            )
        return False
    augmented = train.augmented()
    if runner.cache_teacher == "auto":
        return augmented is False
    if augmented:
        raise ValueError(
            "cache_teacher=True, but the training data are randomly "
            "augmented (the tf.data pipeline draws random numbers), so "
            "each epoch shows the models different images. The teacher "
            "must see the same augmented batch as the student (Beyer et "
            "al. 2021), so its outputs cannot be computed once. Pass "
            "cache_teacher='auto' or False, or data without augmentation."
        )
    if augmented is None:
        raise ValueError(
            "cache_teacher=True needs `train_data` as (x, y) arrays or a "
            "tf.data.Dataset, whose samples can be indexed; received a "
            f"{type(train.data).__name__}."
        )
    return True


def _check_readable_once(train, why):
    augmented = train.augmented()
    if augmented is not False:
        kind = ("a keras.utils.PyDataset" if augmented is None
                else "a randomly augmented tf.data pipeline")
        raise ValueError(
            f"{why}, so it needs `train_data` whose samples it can read "
            "once: arrays or a tf.data.Dataset without random ops; received "
            f"{kind}. Pass the data unaugmented and the random layers as "
            "run(augmentation=...)."
        )


def _check_augmentation(augmentation):
    if augmentation is not None and not is_stateless_augmentation(
        augmentation
    ):
        raise ValueError(
            "`augmentation` takes Keras random image preprocessing layers "
            "(RandomFlip, RandomRotation...) or a keras.Sequential of them, "
            "such as kdtrain.data.augmentation('cifar'). Received: "
            f"augmentation={augmentation!r}"
        )


def _probe(runner, factory, splits):
    """Builds throwaway models; returns `(probe, teacher_probe, classes)`."""
    sample_x, _ = splits["train"].first_batch()
    probe = factory.fresh(None, sample_x)
    shape = output_shape(probe, sample_x)
    teacher_probe = runner.teacher
    if runner.build_teacher is not None:
        teacher_probe = runner.build_teacher()
        if not isinstance(teacher_probe, keras.Model):
            raise ValueError(
                "`build_teacher` must return a keras.Model; it returned "
                f"{teacher_probe!r}."
            )
    if teacher_probe is not None:
        teacher_shape = output_shape(teacher_probe, sample_x)
        if teacher_shape != shape:
            raise ValueError(
                "The models of `build_model` must have the teacher's "
                f"output shape. Received: teacher output shape "
                f"{teacher_shape}, build_model() output shape {shape}."
            )
    if runner.feature_losses:
        # Every generation is a build_model() model taught by one too, or
        # by the teacher: the layers must exist in both.
        plan_feature_losses(probe, probe, runner.feature_losses)
        if teacher_probe is not None:
            plan_feature_losses(probe, teacher_probe, runner.feature_losses)
    return sample_x, probe, teacher_probe, (shape[-1] if shape else 1)


def _label_format(splits, classes):
    for data in splits.values():
        if data.has_labels:
            return label_format(data.first_batch()[1].shape, classes)
    return "sparse"


def make_plan(runner, factory, train_data, validation_data, test_data,
              epochs, teacher_epochs, callbacks, batch_size, evaluate,
              fit_kwargs, augmentation=None):
    """Checks the arguments of `GenerationRunner.run`; returns a `ChainPlan`.

    Raises:
        ValueError, TypeError: Bad input, before anything is trained.
    """
    _check_fit_kwargs(fit_kwargs, runner.deterministic)
    _check_epochs(epochs, teacher_epochs)
    splits = _splits(train_data, validation_data, test_data, batch_size)
    train = splits["train"]
    _check_label_presence(runner, splits)
    _check_augmentation(augmentation)
    cache = _use_cache(runner, train, augmentation)
    if runner.deterministic:
        _check_readable_once(
            train, "deterministic=True orders every epoch itself"
        )
    elif augmentation is not None:
        _check_readable_once(
            train, "`augmentation` is applied by the runner's own pipeline"
        )
    sample_x, probe, teacher_probe, classes = _probe(runner, factory, splits)
    labels = _label_format(splits, classes)
    for data in splits.values():
        data.check_labels(classes, labels)
    own_pipeline = cache or runner.deterministic or augmentation is not None
    arrays = None
    if own_pipeline or train.kind == "arrays":
        arrays = train.training_arrays(canonical=runner.deterministic)
    config = configuration(runner, splits, epochs, teacher_epochs,
                           fit_kwargs, probe, teacher_probe, callbacks,
                           arrays, augmentation)
    evaluation = {k: v for k, v in splits.items() if k != "train"}
    if not evaluate:
        evaluation = {}
    elif not evaluation:
        evaluation = {"train": train}
    return ChainPlan(
        train=train,
        validation=splits.get("validation"),
        evaluation_splits=evaluation,
        epochs=int(epochs),
        teacher_epochs=teacher_epochs,
        callbacks=callbacks,
        fit_kwargs=dict(fit_kwargs),
        sample_x=sample_x,
        classes=classes,
        label_format=labels,
        cache=cache,
        shuffle=train.shuffled(fit_kwargs),
        config=config,
        first=0 if runner.teacher is None else 1,
        training_arrays=arrays,
        augmentation=augmentation,
    )


def configuration(runner, splits, epochs, teacher_epochs, fit_kwargs, probe,
                  teacher_probe, callbacks, arrays, augmentation):
    """The settings that identify a chain: a resume must match them.

    With the training split in `arrays`, its samples' keys are part of it:
    other data of the same shape is another chain.
    """
    loss = runner.distillation_loss
    config = {
        "callbacks": describe_callbacks(callbacks),
        "metrics": [
            metric if isinstance(metric, str)
            else getattr(metric, "name", type(metric).__name__)
            for metric in runner.metrics
        ],
        "generations": runner.generations,
        "distill_ensemble": runner.distill_ensemble,
        "teach_from": runner.teach_from,
        # Names are numbered per process ("adam_3"): left out.
        "feature_losses": [
            keras.saving.serialize_keras_object(loss)
            for loss in runner.feature_losses
        ],
        "distillation_loss": strip_names(
            keras.saving.serialize_keras_object(loss)
        ),
        "ground_truth_weight": runner.ground_truth_weight,
        "optimizer": strip_names(
            keras.saving.serialize_keras_object(runner.make_optimizer())
        ),
        "epochs": int(epochs),
        "teacher_epochs": None if runner.teacher is not None else int(
            teacher_epochs or epochs
        ),
        "seed": runner.seed,
        "deterministic": runner.deterministic,
        "model": architecture_fingerprint(probe),
        "teacher": None,
        "data": {name: data.describe() for name, data in splits.items()},
        "fit": {key: fit_kwargs[key] for key in sorted(fit_kwargs)},
        "outputs": {
            "teacher": runner.teacher_outputs,
            "student": runner.student_outputs,
        },
        "settings": runner.settings,
    }
    if runner.teacher is not None:
        config["teacher"] = {
            **architecture_fingerprint(runner.teacher),
            "weights_sha256": weights_fingerprint(runner.teacher),
        }
    elif runner.build_teacher is not None:
        config["teacher"] = {"build": architecture_fingerprint(teacher_probe)}
    config["augmentation"] = None if augmentation is None else strip_names(
        keras.saving.serialize_keras_object(augmentation)
    )
    if arrays is not None:
        config["data"]["train"]["samples_sha256"] = hashlib.sha256(
            arrays.keys.tobytes()
        ).hexdigest()
    return normalize(config)
