"""The seed report's API: `distil_knowledge`, `ban` and `BANEnsemble`.

Thin wrappers with the signatures of the report's listings (Alfano 2020,
"From Knowledge Distillation to BAN"), so its code runs with only the imports
changed. They are built on `kdtrain.Distiller` and
`kdtrain.GenerationRunner`: the teacher is frozen and run in inference mode,
each student gets a fresh optimizer, and the labels, when given, feed the
metrics.
"""

import os

import keras

from kdtrain import losses as losses_module
from kdtrain import validation
from kdtrain.distiller import Distiller
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.chain import GenerationRunner

DEFAULT_COMPILE_ARGS = {
    "optimizer": "adam",
    "loss": "categorical_crossentropy",
    "metrics": ["accuracy"],
}

_CROSSENTROPY = {
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "crossentropy",
}
_KL = {"kl_divergence", "kld", "kullback_leibler_divergence", "kl"}
_MSE = {"mse", "mean_squared_error"}


def distillation_loss_for(loss):
    """The distillation loss that plays the role of a Keras loss on targets.

    The report trains a student with its compiled loss on the teacher's
    outputs as targets: crossentropy on the teacher's probabilities is
    `SoftTargets`, KL divergence is `KLDivergence(temperature=1)`, and mean
    squared error on logits (the report's "KD on logits") is `LogitsMSE`.

    Args:
        loss: A Keras loss name, function or instance, a
            `kdtrain.losses.DistillationLoss`, or None (crossentropy).

    Returns:
        A `kdtrain.losses.DistillationLoss`.
    """
    if loss is None:
        return losses_module.SoftTargets()
    if isinstance(loss, losses_module.DistillationLoss):
        return loss
    if isinstance(loss, str):
        name = loss.lower()
    elif isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__.lower()
        name = {
            "categoricalcrossentropy": "categorical_crossentropy",
            "sparsecategoricalcrossentropy": "sparse_categorical_crossentropy",
            "binarycrossentropy": "binary_crossentropy",
            "kldivergence": "kl_divergence",
            "meansquarederror": "mean_squared_error",
        }.get(name, name)
    else:
        name = getattr(loss, "__name__", repr(loss)).lower()
    if name in _CROSSENTROPY:
        return losses_module.SoftTargets()
    if name in _KL:
        return losses_module.KLDivergence(temperature=1.0)
    if name in _MSE:
        return losses_module.LogitsMSE()
    raise ValueError(
        "The student's loss has no distillation counterpart: use "
        "'categorical_crossentropy', 'kl_divergence', 'mse' or a "
        f"kdtrain.losses.DistillationLoss. Received: loss={loss!r}"
    )


def _check_weight(ground_truth_weight):
    if ground_truth_weight is None:
        return 0.0
    return validation.ground_truth_weight(ground_truth_weight)


def _copy_optimizer(optimizer):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return type(optimizer).from_config(optimizer.get_config())
    return optimizer


def _fresh_compile_args(compile_args):
    args = dict(compile_args)
    if "optimizer" in args:
        args["optimizer"] = _copy_optimizer(args["optimizer"])
    if args.get("metrics") is not None:
        args["metrics"] = [
            type(m).from_config(m.get_config())
            if isinstance(m, keras.metrics.Metric) else m
            for m in args["metrics"]
        ]
    return args


def _check_fit_args(fit_args, function):
    if fit_args is None:
        return {}
    if not isinstance(fit_args, dict):
        raise TypeError(
            f"{function}() takes `fit_args` as a dict of model.fit "
            "arguments, e.g. dict(epochs=100, batch_size=32, callbacks=[...], "
            "validation_data=(x_valid, y_valid)). (The report's Listing 7 "
            "passes validation data, callbacks, epochs and batch size as "
            "positional arguments, which its own Listing 4 signature does "
            f"not take.) Received: fit_args={fit_args!r}"
        )
    return dict(fit_args)


def _data_arguments(train_dataset, fit_args):
    if isinstance(train_dataset, (tuple, list)):
        x, *rest = train_dataset
        arguments = {"x": x, "y": rest[0] if rest else None}
        if len(rest) > 1:
            arguments["sample_weight"] = rest[1]
        return arguments, fit_args
    fit_args.pop("batch_size", None)  # Batches come from the dataset.
    return {"x": train_dataset}, fit_args


def distil_knowledge(
    teacher_model, student_model, train_dataset, fit_args,
    ground_truth_weight=None,
):
    """Trains `student_model` on `teacher_model`'s outputs (report, Listing 3).

    The student keeps its own compile settings for later use
    (`student_model.evaluate`); its compiled loss picks the distillation
    loss (crossentropy: `SoftTargets`, `"mse"`: `LogitsMSE`), and a copy of
    its optimizer and its metrics are used for the distillation. A
    `kdtrain.Distiller` does the training.

    Args:
        teacher_model: The trained teacher.
        student_model: The student, usually compiled; trained in place.
        train_dataset: A `tf.data.Dataset`, a `keras.utils.PyDataset` (e.g.
            `ImageDataGenerator.flow(...)`) or an `(x, y)` tuple.
        fit_args: A dict of `model.fit` arguments (`epochs`, `callbacks`,
            `validation_data`, `steps_per_epoch`...).
        ground_truth_weight: None, or the weight in [0, 1] of the labels'
            crossentropy mixed with the distillation loss (the report mixes
            the targets, which is the same for crossentropy).

    Returns:
        The `keras.callbacks.History` of the training.

    Example:

    ```python
    student.compile(optimizer="adam", loss="categorical_crossentropy",
                    metrics=["accuracy"])
    history = kdtrain.distil_knowledge(teacher, student, train_data,
                                       dict(epochs=10))
    ```
    """
    weight = _check_weight(ground_truth_weight)
    fit_args = _check_fit_args(fit_args, "distil_knowledge")
    compile_config = {}
    if getattr(student_model, "compiled", False):
        compile_config = keras.saving.deserialize_keras_object(
            student_model.get_compile_config() or {}
        )
    optimizer = _copy_optimizer(compile_config.get("optimizer") or "adam")
    teacher_trainable = teacher_model.trainable
    distiller = Distiller(student_model, teacher_model)
    distiller.compile(
        optimizer=optimizer,
        distillation_loss=distillation_loss_for(compile_config.get("loss")),
        ground_truth_weight=weight,
        metrics=compile_config.get("metrics"),
    )
    arguments, fit_args = _data_arguments(train_dataset, fit_args)
    try:
        return distiller.fit(**arguments, **fit_args)
    finally:
        teacher_model.trainable = teacher_trainable


def ban(
    teacher_model,
    n_students,
    build_model,
    train_dataset,
    fit_args,
    checkpoints=False,
    ground_truth_weight=None,
    compile_args=None,
):
    """Trains `n_students` Born-Again generations (report, Listing 4).

    Runs a `kdtrain.GenerationRunner` from `teacher_model`: student K learns
    from student K-1, each a fresh `build_model()` with a fresh optimizer
    and fresh copies of `fit_args["callbacks"]`. Afterwards every model is
    compiled with `compile_args`, as in the report, so `evaluate` works.

    Args:
        teacher_model: The trained teacher (generation 0).
        n_students: The number of student generations.
        build_model: A function returning a fresh, uncompiled model.
        train_dataset: A `tf.data.Dataset`, a `keras.utils.PyDataset` or an
            `(x, y)` tuple.
        fit_args: A dict of `model.fit` arguments: `epochs`, `batch_size`,
            `callbacks`, `validation_data`, `steps_per_epoch`...
        checkpoints: False; True to save the chain in `"ban_checkpoints"`, or
            a directory. A chain saved there resumes where it stopped.
        ground_truth_weight: None, or the labels' weight in [0, 1].
        compile_args: `optimizer`, `loss` (which picks the distillation
            loss: crossentropy or `"mse"` on logits) and `metrics`.
            Defaults to Adam, categorical crossentropy and accuracy.

    Returns:
        `(histories, students)`: one `History` per student, and the models
        `[teacher_model, student_1, ..., student_n]`.

    Example:

    ```python
    histories, students = kdtrain.ban(
        teacher, 3, build_model, train_data,
        fit_args=dict(epochs=100, validation_data=(x_valid, y_valid),
                      callbacks=[keras.callbacks.EarlyStopping(
                          patience=12, restore_best_weights=True)]))
    ensemble = kdtrain.BANEnsemble(students)
    ```
    """
    fit_args = _check_fit_args(fit_args, "ban")
    if compile_args is None:
        compile_args = DEFAULT_COMPILE_ARGS
    if not isinstance(compile_args, dict):
        raise TypeError(
            "`compile_args` must be a dict of compile() arguments. "
            f"Received: compile_args={compile_args!r}"
        )
    weight = _check_weight(ground_truth_weight)
    if checkpoints is True:
        directory = "ban_checkpoints"
    elif checkpoints:
        directory = os.fspath(checkpoints)
    else:
        directory = None
    epochs = fit_args.pop("epochs", 1)
    callbacks = fit_args.pop("callbacks", None)
    batch_size = fit_args.pop("batch_size", None)
    validation_data = fit_args.pop("validation_data", None)
    verbose = fit_args.pop("verbose", "auto")
    runner = GenerationRunner(
        build_model,
        generations=n_students,
        teacher=teacher_model,
        distillation_loss=distillation_loss_for(compile_args.get("loss")),
        ground_truth_weight=weight,
        optimizer=_copy_optimizer(compile_args.get("optimizer", "adam")),
        metrics=compile_args.get("metrics") or (),
        directory=directory,
        tensorboard=False,
        progress=False,
        verbose=verbose,
    )
    result = runner.run(
        train_dataset,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        batch_size=batch_size,
        evaluate=validation_data is not None,
        **fit_args,
    )
    students = result.models
    for model in students:
        model.compile(**_fresh_compile_args(compile_args))
    histories = [result.histories[name] for name in result.names[1:]]
    return histories, students


@keras.saving.register_keras_serializable(package="kdtrain")
class BANEnsemble(GenerationEnsemble):
    """The report's ensemble of generations (Listing 5).

    A `GenerationEnsemble` averaging its members' class probabilities (the
    softmax of logit outputs, probability outputs as they are). With the
    `students` that `ban()` returns, the teacher is a member too, as in the
    report.

    Args:
        students: The member models.
        **kwargs: Passed to `GenerationEnsemble` (`weights`, `name`...).

    Example:

    ```python
    ensemble = kdtrain.BANEnsemble(students)
    ensemble.compile(loss="categorical_crossentropy", optimizer="adam",
                     metrics=["accuracy"])
    ensemble.evaluate(x_valid, y_valid)
    ```
    """

    def __init__(self, students, name="ban_ensemble", **kwargs):
        super().__init__(students, name=name, **kwargs)

    @property
    def students(self):
        """The member models."""
        return self.models

    def get_config(self):
        config = super().get_config()
        config["students"] = config.pop("models")
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        students = [
            keras.saving.deserialize_keras_object(model)
            for model in config.pop("students")
        ]
        return cls(students, **config)
