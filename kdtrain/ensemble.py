"""`GenerationEnsemble`: a model averaging the class probabilities of others."""

import math

import keras
from keras import ops

from kdtrain.outputs import model_logits
from kdtrain.outputs import resolve_output_kind
from kdtrain.outputs import static_output_shape
from kdtrain.outputs import to_probabilities


def _validate_weights(weights, count):
    if weights is None:
        return None
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(
            "`weights` must be a sequence of numbers, one per model. "
            f"Received: weights={weights!r}"
        ) from None
    if len(weights) != count:
        raise ValueError(
            f"`weights` must have one number per model: {count} models, "
            f"{len(weights)} weights. Received: weights={weights!r}"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights):
        raise ValueError(
            "`weights` must be finite, non-negative and not all zero. "
            f"Received: weights={weights!r}"
        )
    return weights


@keras.saving.register_keras_serializable(package="kdtrain")
class GenerationEnsemble(keras.Model):
    """Averages the class probabilities of several classifiers.

    Each member's outputs are turned into probabilities (the softmax of
    logits, the sigmoid of a single logit, or a probability head's outputs
    as they are) and averaged, optionally weighted. The ensemble's output is
    probabilities, so it is evaluated with `from_logits=False` losses (the
    default of `"categorical_crossentropy"` and friends). The members are
    always run in inference mode.

    Born-Again Networks average the students of all generations; the
    teacher may be a member too, with any architecture, as long as every
    member has the same output shape.

    Args:
        models: The member `keras.Model`s, at least one.
        weights: Optional non-negative weights, one per model; normalized to
            sum to 1. Defaults to a plain mean.
        outputs: `"auto"`, `"logits"` or `"probabilities"`: what the members
            emit, one value for all or a list with one per model. `"auto"`
            detects a final softmax or sigmoid.
        name: Name of the model.
        **kwargs: Passed to `keras.Model`.

    Returns:
        A `keras.Model` whose output is the averaged probabilities.

    Example:

    ```python
    ensemble = kdtrain.GenerationEnsemble(result.models[1:])
    ensemble.compile(loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
    ensemble.evaluate(x_test, y_test)
    ensemble.save("ensemble.keras")
    ```
    """

    def __init__(
        self,
        models,
        weights=None,
        outputs="auto",
        name="generation_ensemble",
        **kwargs,
    ):
        models = list(models)
        if not models:
            raise ValueError("`models` must hold at least one keras.Model.")
        for index, model in enumerate(models):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"`models` must hold keras.Model instances; item {index} "
                    f"is {model!r}."
                )
        kinds = outputs if isinstance(outputs, (list, tuple)) else [
            outputs
        ] * len(models)
        if len(kinds) != len(models):
            raise ValueError(
                f"`outputs` must be one value or one per model ({len(models)})."
                f" Received: outputs={outputs!r}"
            )
        resolved = [
            resolve_output_kind(model, kind, "outputs")
            for model, kind in zip(models, kinds)
        ]
        shapes = {
            model.name: static_output_shape(model)
            for model in models
            if static_output_shape(model) is not None
        }
        if len(set(shapes.values())) > 1:
            raise ValueError(
                "All the models of an ensemble must have the same output "
                f"shape. Received: {shapes}"
            )
        weights = _validate_weights(weights, len(models))
        super().__init__(name=name, **kwargs)
        self.members = models
        self.member_weights = weights
        self.output_kinds = resolved
        self._outputs_argument = outputs
        if all(model.built for model in models):
            self.built = True

    # Its output is probabilities, which `kdtrain.outputs.detect_output_kind`
    # cannot see in a subclassed model.
    outputs_probabilities = True

    @property
    def models(self):
        """The member models."""
        return list(self.members)

    def ensemble_logits(self, inputs):
        """Logits whose softmax is the ensemble's output, computed stably.

        The log of the (weighted) mean of the members' probabilities, taken
        from each member's exact logits (`kdtrain.outputs.model_logits`)
        through a log-sum-exp of their log-probabilities, so that no
        probability is rounded to 0 and inverted: a teacher ensemble keeps
        its soft targets at every temperature. For one sigmoid unit it is
        the logit whose sigmoid is the mean probability. The members run in
        inference mode.

        Args:
            inputs: A batch of the members' inputs.

        Returns:
            Float32 logits, shape `(batch, classes)`.

        Example:

        >>> ensemble = kdtrain.GenerationEnsemble([teacher_a, teacher_b])
        >>> logits = ensemble.ensemble_logits(x[:8])
        """
        weights = self.member_weights or [1.0] * len(self.members)
        log_weights = [math.log(w / sum(weights)) if w else -math.inf
                       for w in weights]
        terms, single = [], False
        for model, kind, log_weight in zip(self.members, self.output_kinds,
                                           log_weights):
            logits = model_logits(model, inputs, kind)
            single = logits.shape[-1] == 1
            if single:  # log p and log(1 - p) of the unit
                log_p = ops.concatenate(
                    [ops.log_sigmoid(logits), ops.log_sigmoid(-logits)],
                    axis=-1,
                )
            else:
                log_p = ops.log_softmax(logits, axis=-1)
            terms.append(log_p + log_weight)
        log_mean = ops.logsumexp(ops.stack(terms, axis=0), axis=0)
        if single:
            return log_mean[:, :1] - log_mean[:, 1:]
        return log_mean

    def call(self, inputs, training=None):
        probabilities = [
            to_probabilities(model(inputs, training=False), kind)
            for model, kind in zip(self.members, self.output_kinds)
        ]
        if self.member_weights is None:
            return ops.mean(ops.stack(probabilities, axis=0), axis=0)
        total = sum(self.member_weights)
        return sum(
            p * (w / total) for p, w in zip(probabilities, self.member_weights)
        )

    def compute_output_shape(self, input_shape):
        return self.members[0].compute_output_shape(input_shape)

    def get_config(self):
        outputs = self._outputs_argument
        if isinstance(outputs, tuple):
            outputs = list(outputs)
        return {
            "name": self.name,
            "models": [
                keras.saving.serialize_keras_object(model)
                for model in self.members
            ],
            "weights": self.member_weights,
            "outputs": outputs,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["models"] = [
            keras.saving.deserialize_keras_object(model)
            for model in config["models"]
        ]
        return cls(**config)
