"""A chain's configuration: normalized settings, fingerprints, differences."""

import hashlib
import json
import os

import keras

from kdtrain.files import json_default


def normalize(value):
    """`value` as it reads back from JSON (tuples become lists...)."""
    return json.loads(json.dumps(value, sort_keys=True, default=json_default))


def strip_names(value):
    """`value` without its `name` entries, at any depth."""
    if isinstance(value, dict):
        return {
            k: strip_names(v) for k, v in value.items() if k != "name"
        }
    if isinstance(value, (list, tuple)):
        return [strip_names(v) for v in value]
    return value


def architecture_fingerprint(model):
    """A name-independent description of `model`'s architecture.

    Layer names change from one build to the next (`dense`, `dense_1`...),
    so the fingerprint records each layer's class and configuration without
    names, and the shapes of the weights.

    Args:
        model: A built `keras.Model`.

    Returns:
        A dict with the model's class, parameter count and a SHA-256 of the
        layers' classes, configurations and weight shapes.
    """
    layers = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        config = None
        if not isinstance(layer, keras.Model):
            try:
                config = strip_names(layer.get_config())
            except (NotImplementedError, TypeError):
                config = None
        layers.append([type(layer).__name__, config])
    shapes = [list(w.shape) for w in model.weights]
    text = json.dumps(
        [layers, shapes], sort_keys=True, default=json_default
    )
    return {
        "class": type(model).__name__,
        "params": int(model.count_params()),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return items
    return {prefix: value}


# Settings that later versions added, with the value that does what runs
# made before did: a directory whose configuration lacks one was made with it.
ADDED_LATER = {"distill_ensemble": False, "settings.distill_ensemble": False}


def _as_now(saved, current):
    """`saved` flattened, with the settings added since filled in."""
    saved, current = _flatten(saved), _flatten(current)
    for key, value in ADDED_LATER.items():
        if key not in saved and current.get(key) == value:
            saved[key] = value
    return saved, current


def same_configuration(saved, current):
    """Whether a directory's configuration `saved` is `current`'s."""
    saved, current = _as_now(saved or {}, current)
    return saved == current


def describe_differences(saved, current):
    """Lines saying where two configurations differ."""
    saved, current = _as_now(saved, current)
    lines = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key, "<absent>") != current.get(key, "<absent>"):
            old = json.dumps(saved.get(key, "<absent>"), default=str)
            new = json.dumps(current.get(key, "<absent>"), default=str)
            lines.append(
                f"  {key}: {old[:200]} in the directory, {new[:200]} now"
            )
    return lines


# Attributes of Keras callbacks that hold training state, not settings.
_CALLBACK_STATE = {"wait", "stopped_epoch", "best", "best_epoch",
                   "best_weights", "model", "params", "validation_data"}


_TRAINING_CALLBACKS = (
    keras.callbacks.EarlyStopping,
    keras.callbacks.ReduceLROnPlateau,
    keras.callbacks.LearningRateScheduler,
)


def describe_callbacks(callbacks):
    """The settings of the user's callbacks, for a chain's configuration.

    A resumed chain must train its remaining generations with the callbacks
    that shape training as it started with them (an EarlyStopping of another
    patience would change the result), so the classes and plain settings of
    those are part of the configuration; monitoring callbacks may come and
    go. Callbacks given as a function are described as such.
    """
    if callbacks is None:
        return []
    if callable(callbacks) and not isinstance(callbacks, (list, tuple)):
        return ["<function>"]
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    described = []
    for callback in callbacks:
        if not isinstance(callback, _TRAINING_CALLBACKS):
            continue
        settings = {
            key: value for key, value in vars(callback).items()
            if not key.startswith("_") and key not in _CALLBACK_STATE
            and isinstance(value, (bool, int, float, str, type(None)))
        }
        described.append({"class": type(callback).__name__, **settings})
    return described


def _batch_size(plan):
    """The training batch size, also of a `tf.data` pipeline or `PyDataset`.

    A pipeline records no batch size of its own: its first batch tells.
    """
    if plan.training_arrays is not None:
        return int(plan.training_arrays.batch_size)
    if plan.train.kind == "arrays":
        return int(plan.train.batch_size or 32)  # fit's default
    return int(keras.tree.flatten(plan.sample_x)[0].shape[0])


def _model_names(runner, plan):
    """The names of the students' and the teacher's architectures.

    The command line's names (`wrn-16-1`...) when it made the run, else the
    models' classes.
    """
    settings = runner.settings if isinstance(runner.settings, dict) else {}
    model = settings.get("model") or plan.config["model"]["class"]
    teacher = plan.config["teacher"]
    if runner.teacher is not None:
        given = settings.get("teacher")
        return model, os.path.basename(given) if given else teacher["class"]
    if runner.build_teacher is not None:
        return model, (settings.get("teacher_model")
                       or teacher["build"]["class"])
    return model, model


def summary(runner, plan):
    """The chain's main settings for TensorBoard's HParams dashboard.

    The data (`dataset`: the command line's dataset name, else the kind of
    the training data; `batch_size`, also of a `tf.data` pipeline), the
    models (`model`, `params`, `teacher_model`, `teacher`: trained or
    given), the distillation (`distillation_loss`, its `temperature` when
    it has one, `ground_truth_weight`, `feature_losses`, `teach_from`,
    `generations`) and the training (`epochs`, `teacher_epochs`,
    `optimizer`, `learning_rate`, `seed`: -1 for none).

    Returns:
        `{"hparams": {...}, "metrics": [summary tags], "trial_id": ...}`.
    """
    loss = runner.distillation_loss
    optimizer = plan.config["optimizer"]
    learning_rate = optimizer.get("config", {}).get("learning_rate")
    settings = runner.settings if isinstance(runner.settings, dict) else {}
    model, teacher_model = _model_names(runner, plan)
    hparams = {
        "dataset": settings.get("dataset")
        or plan.config["data"]["train"]["kind"],
        "batch_size": _batch_size(plan),
        "model": model,
        "params": plan.config["model"]["params"],
        "teacher_model": teacher_model,
        "teacher": "trained" if runner.teacher is None else "given",
        "generations": runner.generations,
        "distillation_loss": "none" if loss is None
        else type(loss).__name__,
        "ground_truth_weight": runner.ground_truth_weight,
        "feature_losses": ",".join(
            loss.name for loss in runner.feature_losses
        ) or "none",
        "teach_from": runner.teach_from,
        "epochs": plan.config["epochs"],
        "teacher_epochs": plan.config["teacher_epochs"] or 0,
        "optimizer": optimizer.get("class_name", "?"),
        "learning_rate": learning_rate
        if isinstance(learning_rate, (int, float))
        else str(learning_rate),
        "seed": -1 if runner.seed is None else runner.seed,
    }
    if hasattr(loss, "temperature"):
        hparams["temperature"] = float(loss.temperature)
    return {
        "hparams": hparams,
        "metrics": [
            f"{split}/{metric}"
            for split in plan.evaluation_splits
            for metric in ("accuracy", "loss")
        ],
        "trial_id": os.path.basename(os.path.abspath(runner.directory))
        if runner.directory else None,
    }
