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
from kdtrain.tracing import build_training_state
from kdtrain.tracing import symbolic_batch
from kdtrain.distribute import check_strategy
from kdtrain.distribute import replica_sum
from kdtrain.distribute import support_multi_worker
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.features import feature_loss
from kdtrain.features import prepare_feature_losses
from kdtrain.outputs import _final_layer
from kdtrain.outputs import label_crossentropy
from kdtrain.outputs import label_format
from kdtrain.outputs import labels_as_distribution
from kdtrain.outputs import logits_model
from kdtrain.outputs import model_logits
from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import static_output_shape
from kdtrain.outputs import to_logits
from kdtrain.outputs import to_probabilities


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
    sigmoid unit for binary classifiers). A probability-headed teacher or
    student of the functional or Sequential API gives its exact
    pre-activation logits, taken from its graph with its own weights
    (`kdtrain.outputs.logits_model`), so a temperature softens it exactly
    as it softens a logits model, however saturated its head; the student
    then runs once per step as that logits model, and its probabilities
    (for metrics and a ground-truth loss on outputs) are their softmax or
    sigmoid. Elsewhere probabilities are inverted within float32's bounds
    (`kdtrain.outputs.to_logits`).

    Args:
        student: The `keras.Model` to train.
        teacher: A trained `keras.Model` with the student's output shape. It
            is frozen (`trainable = False`) and always called with
            `training=False`. A list of models teaches with the average of
            their probabilities (a `kdtrain.GenerationEnsemble`, whose log
            serves as its logits: `GenerationEnsemble.ensemble_logits`).
        teacher_outputs: `"auto"` (detect a final softmax or sigmoid),
            `"logits"` or `"probabilities"`; for a list of teachers, one
            value for all or a list with one per teacher.
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
        if isinstance(teacher, (list, tuple)):
            # Several teachers: their averaged probabilities teach.
            teacher = GenerationEnsemble(list(teacher), outputs=teacher_outputs,
                                         name="teacher_ensemble")
            teacher_outputs = "probabilities"
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
                student; the student itself stays unchanged. Each `compile`
                creates fresh adapters and drops those of the previous one,
                so pass a new optimizer (or a name) when recompiling with
                hints: an optimizer already built for the old adapters
                refuses the new ones at the first step (Keras' "Unknown
                variable" error). Reused without hints, it keeps its unused
                slots for the dropped adapters.
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

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with the training state built first.

        The optimizer's and metrics' variables are created before the step
        is traced (`kdtrain.tracing`), so it is traced once, not twice.
        """
        batch = symbolic_batch(x, y, kwargs.get("sample_weight"))
        if batch is not None:
            build_training_state(self, batch)
        return super().fit(x, y, *args, **kwargs)

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
        """Checks the feature losses' layers; builds extractors and adapters.

        The adapters and trackers of a previous `compile` are dropped: only
        the current ones are trainable variables and logged metrics.
        """
        feature_losses = list(feature_losses or ())
        with self.distribute_strategy.scope():
            trackers, adapters, extractors = prepare_feature_losses(
                self.student, self.teacher, feature_losses
            )
        # Reassigning a tracked list keeps the old items tracked (as
        # trainable variables without gradients, as logged metrics);
        # clearing Keras' tracked list untracks them.
        self.hint_adapters.clear()
        self.feature_loss_trackers.clear()
        self.feature_losses = feature_losses
        self.feature_loss_trackers = trackers
        self.hint_adapters = adapters
        # Kept out of Keras' tracking: the extractors share the models'
        # layers, which the Distiller already tracks.
        self.__dict__["_feature_models"] = extractors

    def replace_teacher(self, teacher, teacher_outputs="auto"):
        """Distills from another teacher, keeping the compiled state.

        A training step traced on data that carry the teacher's cached
        logits (`TeacherOutputCache.dataset`) never ran the teacher, so it
        stays valid and the next `fit` on such data traces nothing again. A
        step that ran the old teacher (online) is dropped and traced anew.

        Args:
            teacher: The new frozen `keras.Model`, with the old one's output
                shape.
            teacher_outputs: `"auto"`, `"logits"` or `"probabilities"`.

        Example:

        >>> distiller.replace_teacher(next_teacher)
        >>> distiller.fit(TeacherOutputCache.compute(next_teacher, x)
        ...               .dataset(x, y), epochs=5, shuffle=False)
        """
        validation.distillation_pair(self.student, teacher)
        kind = resolve_output_kind(teacher, teacher_outputs, "teacher_outputs")
        validation.same_output_shapes(static_output_shape(teacher),
                                      static_output_shape(self.student))
        if self._feature_models is not None:
            raise ValueError(
                "replace_teacher() cannot move feature losses to another "
                "teacher: build a new Distiller."
            )
        self._tracker.untrack(self.teacher)
        self.teacher = teacher
        self.teacher.trainable = False
        self.teacher_outputs = kind
        self._output_kind_arguments["teacher_outputs"] = teacher_outputs
        if self.__dict__.get("_teacher_traced"):
            # A traced step ran the old teacher (online): Keras traces anew
            # when its functions are None. A step traced on cached logits
            # never ran it and stays; online data would trace its own.
            self.train_function = None
            self.__dict__["_teacher_traced"] = False

    def call(self, inputs, training=None):
        return self.student(unpack_inputs(inputs)[0], training=training)

    # Targets and outputs ------------------------------------------------

    def teacher_logits(self, x):
        """The teacher's float32 logits on `x` (inference mode).

        A probability head's are its exact pre-activation logits where its
        graph shows them (`kdtrain.outputs.model_logits`).
        """
        return ops.stop_gradient(
            model_logits(self.teacher, x, self.teacher_outputs)
        )

    def teacher_targets(self, x, cached_logits=None):
        """What the teacher gives a batch: `(logits, features or None)`.

        The one place the targets come from: logits cached with the batch
        (`kdtrain.cache`), or one inference-mode pass of the teacher
        (through its feature extractor when there are feature losses).
        """
        if self._feature_models is not None:
            extractor = self._feature_models[0][1]
            # The extractor's first output is the teacher's: a probability
            # head's exact logits come from the same graph, in the same pass.
            exact = (logits_model(extractor)
                     if self.teacher_outputs == "probabilities" else None)
            outputs, *features = (exact or extractor)(x, training=False)
            logits = to_logits(outputs, "logits" if exact else
                               self.teacher_outputs)
            return ops.stop_gradient(logits), features
        if cached_logits is not None:
            return ops.cast(cached_logits, "float32"), None
        return self.teacher_logits(x), None

    def _exact_student_logits(self, model):
        """`logits_model(model)` for a probability-headed student, or None.

        None too where the head has an activity regularizer: it sees the
        probabilities, so skipping the head would drop its loss.
        """
        if self.student_outputs != "probabilities":
            return None
        head = _final_layer(model)
        if getattr(head, "activity_regularizer", None) is not None:
            return None
        return logits_model(model)

    def _student_pass(self, x, training, features=False):
        """One pass of the student: `(outputs, logits, features or None)`.

        A probability head whose logits `logits_model` can read runs as
        that logits model, and its outputs are their softmax or sigmoid:
        the losses get the exact logits, even where the head saturates
        (beyond what `to_logits` can invert), and the metrics the same
        probabilities, from one pass. Other students' logits are
        `to_logits(outputs)`.

        Args:
            x: A batch of inputs.
            training: Whether the pass runs in training mode.
            features: Whether to run the feature extractor, whose first
                output is the student's, and return the features too.
        """
        model = self._feature_models[0][0] if features else self.student
        exact = self._exact_student_logits(model)
        results = (model if exact is None else exact)(x, training=training)
        outputs, rest = ((results[0], list(results[1:])) if features
                         else (results, None))
        if exact is None:
            return outputs, to_logits(outputs, self.student_outputs), rest
        logits = ops.cast(outputs, "float32")
        return to_probabilities(logits, "logits"), logits, rest

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

    def _distillation_values(self, y, teacher_logits, student_logits, fmt,
                             sample_weight=None):
        """Per-sample distillation loss."""
        loss = self.distillation_loss
        kwargs = {}
        # A loss with batch statistics (DIST's columns) weighs them itself.
        if loss.uses_sample_weight:
            kwargs["sample_weight"] = sample_weight
        if not loss.uses_labels:
            return per_sample(loss.call(teacher_logits, student_logits,
                                        **kwargs))
        if y is None:
            raise ValueError(
                f"The distillation loss {loss.name!r} needs labels, but the "
                "data carries none."
            )
        y = labels_as_distribution(y, student_logits.shape[-1], fmt)
        return per_sample(loss.call(teacher_logits, student_logits, labels=y,
                                    **kwargs))

    def _with_regularization(self, loss):
        """`loss` plus the student's regularization losses, if any."""
        if not self.student.losses:
            return loss
        return loss + ops.sum(
            [ops.cast(v, "float32") for v in self.student.losses]
        )

    def compute_distillation_loss(
        self, y, teacher_logits, student_outputs, sample_weight=None,
        student_logits=None,
    ):
        """The total training loss of one batch, before distribution scaling.

        Updates the `distillation_loss` and `ground_truth_loss` trackers.

        Args:
            y: Labels, or None for unlabeled data.
            teacher_logits: The teacher's logits for the batch.
            student_outputs: The student's outputs as it emits them.
            sample_weight: Optional per-sample weights.
            student_logits: The student's exact float32 logits, where
                known (a probability head's, from its graph); by default
                `to_logits(student_outputs)`, within the bounds stated
                there.

        Returns:
            The scalar loss: the mix of the two losses plus the student's
            regularization losses.
        """
        w = self.ground_truth_weight
        batch_size = ops.shape(student_outputs)[0]
        if student_logits is None:
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
                                          fmt, sample_weight),
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
        if cached_logits is None:  # this trace runs the teacher
            self.__dict__["_teacher_traced"] = True
        teacher_logits, teacher_features = self.teacher_targets(
            x, cached_logits
        )
        with tf.GradientTape() as tape:
            student_outputs, student_logits, student_features = (
                self._student_pass(
                    x, training=True,
                    features=self._feature_models is not None,
                )
            )
            loss = self.compute_distillation_loss(
                y, teacher_logits, student_outputs, sample_weight,
                student_logits,
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
            # The replicas' gradients are summed, so each replica's mean is
            # weighted by its share of the global batch (Keras divides by the
            # number of replicas, which is exact only for equal shares).
            batch_size = ops.cast(ops.shape(student_outputs)[0], "float32")
            share = ops.divide_no_nan(batch_size, replica_sum(batch_size))
            loss = loss * share
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
        student_outputs, logits, _ = self._student_pass(x, training=False)
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
