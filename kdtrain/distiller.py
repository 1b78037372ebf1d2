"""The Distiller: a `keras.Model` that trains a student on a frozen teacher."""

import contextlib

import keras
import tensorflow as tf
from keras import ops

from kdtrain import losses as losses_module
from kdtrain import validation
from kdtrain.losses.reduction import per_sample
from kdtrain.losses.reduction import weighted_mean
from kdtrain.pipelines import unpack_inputs
from kdtrain.distribute import check_strategy
from kdtrain.distribute import support_multi_worker
from kdtrain.features import feature_loss
from kdtrain.features import prepare_feature_losses
from kdtrain.outputs import label_crossentropy
from kdtrain.outputs import label_format
from kdtrain.outputs import labels_as_distribution
from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import static_output_shape
from kdtrain.outputs import to_logits
from kdtrain.outputs import to_probabilities


def num_replicas():
    """Replicas that each compute the loss on their share of the batch."""
    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="kdtrain")
class Distiller(keras.Model):
    """Trains a student to match a frozen teacher, the way `model.fit` trains.

    Each training step runs the teacher in inference mode, outside the
    gradient tape, and the student in training mode; the loss is

    `(1 - w) * distillation_loss + w * ground_truth_loss`

    with `w = ground_truth_weight`. `evaluate()` and `predict()` use the
    student alone: `evaluate()` reports the ground-truth loss and the
    compiled metrics against the labels, without running the teacher.

    Outputs may be logits or probabilities (a final softmax, or a single
    sigmoid unit for binary classifiers). Probabilities are turned into
    log-probabilities, so a temperature softens a softmax-headed teacher
    exactly as it softens its logits.

    Args:
        student: The `keras.Model` to train.
        teacher: A trained `keras.Model` with the student's output shape. It
            is frozen (`trainable = False`) and always called with
            `training=False`.
        teacher_outputs: `"auto"` (detect a final softmax or sigmoid),
            `"logits"` or `"probabilities"`.
        student_outputs: Same for the student.
        strategy: Optional `tf.distribute.Strategy` to train under; by
            default the one in scope. The student must have been created
            inside its `scope()` (the teacher is only read and may live
            anywhere).
        name: Name of the model.
        **kwargs: Passed to `keras.Model`.

    Instead of running the teacher, a step can read the teacher's logits
    from the batch, precomputed by a `kdtrain.cache.TeacherOutputCache`:
    batches `({"inputs": x, "teacher_logits": logits}, y, sample_weight)`
    as made by `TeacherOutputCache.dataset`.

    Attributes:
        student: The student; after `fit` it is a standalone trained model
            (`distiller.student.save("student.keras")`).
        teacher: The frozen teacher.

    Example:

    ```python
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer="adam",
        distillation_loss=kdtrain.losses.KLDivergence(temperature=4.0),
        ground_truth_weight=0.1,
        metrics=["accuracy"],
    )
    distiller.fit(x_train, y_train, epochs=10, validation_data=(x_val, y_val))
    distiller.evaluate(x_test, y_test)  # the student alone
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student,
        teacher,
        teacher_outputs="auto",
        student_outputs="auto",
        strategy=None,
        name="distiller",
        **kwargs,
    ):
        validation.distillation_pair(student, teacher)
        strategy = check_strategy(strategy, student)
        teacher_kind = resolve_output_kind(
            teacher, teacher_outputs, "teacher_outputs"
        )
        student_kind = resolve_output_kind(
            student, student_outputs, "student_outputs"
        )
        shapes = (static_output_shape(teacher), static_output_shape(student))
        validation.same_output_shapes(*shapes)
        with strategy.scope() if strategy else contextlib.nullcontext():
            self._init(student, teacher, teacher_kind, student_kind, name,
                       kwargs)
        if strategy is not None:
            self._distribute_strategy = strategy
        # Subclassed models show their output shapes only when traced.
        self._shapes_known = None not in shapes
        self._output_kind_arguments = {
            "teacher_outputs": teacher_outputs,
            "student_outputs": student_outputs,
        }

    def _init(self, student, teacher, teacher_kind, student_kind, name,
              kwargs):
        super().__init__(name=name, **kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.teacher_outputs = teacher_kind
        self.student_outputs = student_kind
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self.ground_truth_loss_tracker = keras.metrics.Mean(
            name="ground_truth_loss"
        )
        self.distillation_loss = losses_module.SoftTargets()
        self.ground_truth_weight = 0.0
        self.ground_truth_loss = None
        self.feature_losses = []
        self.feature_loss_trackers = []
        self.hint_adapters = []
        self.__dict__["_feature_models"] = None
        if student.built:
            self.built = True

    def compile(
        self,
        optimizer="adam",
        distillation_loss="soft_targets",
        ground_truth_weight=0.0,
        ground_truth_loss=None,
        metrics=("accuracy",),
        feature_losses=(),
        **kwargs,
    ):
        """Configures the distillation.

        Args:
            optimizer: A Keras optimizer or its name.
            distillation_loss: A `kdtrain.losses.DistillationLoss`, one of
                the names in `kdtrain.losses.ALIASES`, or None to switch the
                distillation of the outputs off (feature losses and labels
                only).
            ground_truth_weight: `w` in `(1 - w) * distillation + w *
                ground_truth`, a number in [0, 1]. With 0 the data need not
                carry labels.
            ground_truth_loss: The loss against the labels, given the
                student's outputs as they are (a Keras loss, its name, or a
                function returning per-sample values). `None` picks the
                crossentropy that fits the labels (integer, one-hot or
                binary 0/1) and the student's output kind.
            metrics: Metrics of the student against the labels. They see the
                student's probabilities (softmax or sigmoid of logits).
            feature_losses: `kdtrain.losses.FeatureLoss` instances
                (`AttentionTransfer`, `HintLoss`) between named layers of the
                student and the teacher; each adds `weight` times its value
                to the loss and is logged under its name. Hint adapters are
                created here, belong to the Distiller and train with the
                student; the student itself stays unchanged.
            **kwargs: Other arguments of `keras.Model.compile`
                (`jit_compile`, `steps_per_execution`, `weighted_metrics`...).
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "Distiller.compile() takes `distillation_loss` and "
                "`ground_truth_loss` instead of `loss`. "
                f"Received: loss={kwargs['loss']!r}"
            )
        kwargs.pop("loss", None)
        self.distillation_loss = (
            None if distillation_loss is None
            else losses_module.get(distillation_loss)
        )
        self.ground_truth_weight = validation.ground_truth_weight(
            ground_truth_weight
        )
        self._set_feature_losses(feature_losses)
        if (self.distillation_loss is None and not self.feature_losses
                and self.ground_truth_weight == 0.0):
            raise ValueError(
                "Nothing to learn: `distillation_loss` is None, there are no "
                "`feature_losses` and `ground_truth_weight` is 0."
            )
        self.ground_truth_loss = (
            None if ground_truth_loss is None else keras.losses.get(
                ground_truth_loss
            )
        )
        if metrics is not None:
            metrics = list(metrics)
        with self.distribute_strategy.scope():
            super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        support_multi_worker(self)

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        return {
            **config,
            "distillation_loss": keras.saving.serialize_keras_object(
                self.distillation_loss
            ),
            "ground_truth_weight": self.ground_truth_weight,
            "ground_truth_loss": keras.saving.serialize_keras_object(
                self.ground_truth_loss
            ),
            "feature_losses": [
                keras.saving.serialize_keras_object(loss)
                for loss in self.feature_losses
            ],
        }

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _set_feature_losses(self, feature_losses):
        """Checks the feature losses' layers; builds extractors and adapters."""
        self.feature_losses = list(feature_losses or ())
        trackers, adapters, extractors = prepare_feature_losses(
            self.student, self.teacher, self.feature_losses
        )
        self.feature_loss_trackers = trackers
        self.hint_adapters = adapters
        # Kept out of Keras' tracking: the extractors share the models'
        # layers, which the Distiller already tracks.
        self.__dict__["_feature_models"] = extractors

    def call(self, inputs, training=None):
        return self.student(unpack_inputs(inputs)[0], training=training)

    # Targets and outputs ------------------------------------------------

    def teacher_logits(self, x):
        """The teacher's outputs on `x` as float32 logits (inference mode)."""
        outputs = self.teacher(x, training=False)
        return ops.stop_gradient(to_logits(outputs, self.teacher_outputs))

    def teacher_targets(self, x, cached_logits=None):
        """What the teacher gives a batch: `(logits, features or None)`.

        The one place the targets come from: logits cached with the batch
        (`kdtrain.cache`), or one inference-mode pass of the teacher
        (through its feature extractor when there are feature losses).
        """
        if self._feature_models is not None:
            outputs, *features = self._feature_models[0][1](x, training=False)
            logits = to_logits(outputs, self.teacher_outputs)
            return ops.stop_gradient(logits), features
        if cached_logits is not None:
            return ops.cast(cached_logits, "float32"), None
        return self.teacher_logits(x), None

    def _student_forward(self, x):
        """One training-mode pass: `(outputs, features or None)`."""
        if self._feature_models is not None:
            outputs, *features = self._feature_models[0][0](x, training=True)
            return outputs, features
        return self.student(x, training=True), None

    # Losses ---------------------------------------------------------------

    def _ground_truth_values(self, y, student_outputs, student_logits, fmt):
        """Per-sample loss of the student against labels of format `fmt`."""
        if self.ground_truth_loss is not None:
            loss = self.ground_truth_loss
            if isinstance(loss, keras.losses.Loss):
                y_true = ops.convert_to_tensor(y, dtype=loss.dtype)
                y_pred = ops.convert_to_tensor(student_outputs, loss.dtype)
                return per_sample(loss.call(y_true, y_pred))
            return per_sample(loss(y, student_outputs))
        return label_crossentropy(y, student_logits, fmt)

    def _distillation_values(self, y, teacher_logits, student_logits, fmt):
        """Per-sample distillation loss."""
        loss = self.distillation_loss
        if not loss.uses_labels:
            return per_sample(loss.call(teacher_logits, student_logits))
        if y is None:
            raise ValueError(
                f"The distillation loss {loss.name!r} needs labels, but the "
                "data carries none."
            )
        y = labels_as_distribution(y, student_logits.shape[-1], fmt)
        return per_sample(loss.call(teacher_logits, student_logits, labels=y))

    def _with_regularization(self, loss):
        """`loss` plus the student's regularization losses, if any."""
        if not self.student.losses:
            return loss
        return loss + ops.sum(
            [ops.cast(v, "float32") for v in self.student.losses]
        )

    def compute_distillation_loss(
        self, y, teacher_logits, student_outputs, sample_weight=None
    ):
        """The total training loss of one batch, before distribution scaling.

        Updates the `distillation_loss` and `ground_truth_loss` trackers.

        Args:
            y: Labels, or None for unlabeled data.
            teacher_logits: The teacher's logits for the batch.
            student_outputs: The student's outputs as it emits them.
            sample_weight: Optional per-sample weights.

        Returns:
            The scalar loss: the mix of the two losses plus the student's
            regularization losses.
        """
        w = self.ground_truth_weight
        batch_size = ops.shape(student_outputs)[0]
        student_logits = to_logits(student_outputs, self.student_outputs)
        if not self._shapes_known:
            validation.same_output_shapes(teacher_logits.shape[1:],
                                 student_logits.shape[1:])
        fmt = None if y is None else label_format(
            y.shape, student_logits.shape[-1]
        )
        total = 0.0
        if self.distillation_loss is not None:
            distillation = weighted_mean(
                self._distillation_values(y, teacher_logits, student_logits,
                                          fmt),
                sample_weight,
            )
            self.distillation_loss_tracker.update_state(
                distillation, sample_weight=batch_size
            )
            total = distillation if w == 0.0 else (1.0 - w) * distillation
        if y is not None:
            ground_truth = weighted_mean(
                self._ground_truth_values(y, student_outputs, student_logits,
                                          fmt),
                sample_weight,
            )
            self.ground_truth_loss_tracker.update_state(
                ground_truth, sample_weight=batch_size
            )
            if w > 0.0:
                total = total + w * ground_truth
        return self._with_regularization(total)

    def _check_labels(self, y):
        if y is None and self.ground_truth_weight > 0.0:
            raise ValueError(
                "`ground_truth_weight` is "
                f"{self.ground_truth_weight}, but the data carries no labels."
                " Pass (x, y) data, or compile with ground_truth_weight=0 to "
                "distill on unlabeled data."
            )

    # Steps ----------------------------------------------------------------

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_labels(y)
        x, cached_logits = unpack_inputs(x)
        teacher_logits, teacher_features = self.teacher_targets(
            x, cached_logits
        )
        with tf.GradientTape() as tape:
            student_outputs, student_features = self._student_forward(x)
            loss = self.compute_distillation_loss(
                y, teacher_logits, student_outputs, sample_weight
            )
            if student_features is not None:
                _, student_names, teacher_names = self._feature_models
                loss = loss + feature_loss(
                    self.feature_losses, self.feature_loss_trackers,
                    self.hint_adapters,
                    dict(zip(teacher_names, teacher_features)),
                    dict(zip(student_names, student_features)),
                    sample_weight,
                )
            self._loss_tracker.update_state(
                loss, sample_weight=ops.shape(student_outputs)[0]
            )
            # Each replica's gradients are summed across replicas, so the
            # per-replica mean is divided by their number (as Keras does).
            loss = loss / num_replicas()
            loss = self.optimizer.scale_loss(loss)
        trainable_variables = self.trainable_variables
        gradients = tape.gradient(loss, trainable_variables)
        self.optimizer.apply(gradients, trainable_variables)
        return self.compute_metrics(x, y, student_outputs, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "Distiller.evaluate() measures the student against labels, "
                "but the data carries none. Pass (x, y) data."
            )
        x = unpack_inputs(x)[0]
        student_outputs = self.student(x, training=False)
        logits = to_logits(student_outputs, self.student_outputs)
        fmt = label_format(y.shape, logits.shape[-1])
        loss = self._with_regularization(weighted_mean(
            self._ground_truth_values(y, student_outputs, logits, fmt),
            sample_weight,
        ))
        self._loss_tracker.update_state(
            loss, sample_weight=ops.shape(student_outputs)[0]
        )
        self._update_compiled_metrics(y, student_outputs, sample_weight)
        return self._results(labels=True, training=False)

    # Metrics ----------------------------------------------------------------

    def _update_compiled_metrics(self, y, student_outputs, sample_weight):
        if y is not None and self._compile_metrics is not None:
            probabilities = to_probabilities(
                student_outputs, self.student_outputs
            )
            self._compile_metrics.update_state(y, probabilities, sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self._update_compiled_metrics(y, y_pred, sample_weight)
        return self._results(labels=y is not None, training=True)

    def _results(self, labels, training):
        skipped = set()
        if not labels:
            skipped |= {id(self._compile_metrics), id(self.ground_truth_loss_tracker)}
        if not training:
            skipped |= {
                id(self.distillation_loss_tracker),
                id(self.ground_truth_loss_tracker),
                *map(id, self.feature_loss_trackers),
            }
        if self.distillation_loss is None:
            skipped.add(id(self.distillation_loss_tracker))
        results = {}
        for metric in self.metrics:
            if id(metric) in skipped:
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    def get_metrics_result(self):
        built = self._compile_metrics is None or self._compile_metrics.built
        return self._results(labels=built, training=True)

    # Serialization ----------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            **self._output_kind_arguments,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
