"""The chain's models: fresh ones per generation, optimizers, compiling."""

import copy

import keras

from kdtrain.distribute import support_multi_worker
from kdtrain.outputs import crossentropy


def make_optimizer(optimizer):
    """A fresh optimizer from a name, a config, an optimizer or a function.

    Raises:
        ValueError: Anything else, or a function returning no optimizer.
    """
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return type(optimizer).from_config(optimizer.get_config())
    if isinstance(optimizer, (str, dict)):
        return keras.optimizers.get(copy.deepcopy(optimizer))
    if callable(optimizer):
        made = optimizer()
        if not isinstance(made, keras.optimizers.Optimizer):
            raise ValueError(
                "The `optimizer` function must return a keras optimizer. "
                f"It returned {made!r}."
            )
        return made
    raise ValueError(
        "`optimizer` must be a name, a serialized optimizer, an "
        "optimizer or a function returning one. "
        f"Received: optimizer={optimizer!r}"
    )


def fresh_metrics(metrics, binary_logits=False):
    """New metric objects (a metric instance holds state)."""
    fresh = []
    for metric in metrics or ():
        if binary_logits and metric in ("accuracy", "acc"):
            metric = keras.metrics.BinaryAccuracy(
                threshold=0.0, name="accuracy"
            )
        elif isinstance(metric, keras.metrics.Metric):
            metric = type(metric).from_config(metric.get_config())
        fresh.append(metric)
    return fresh


def compile_for_labels(model, kind, label_format, optimizer, metrics):
    """Compiles `model` to train (or be evaluated) on the labels."""
    support_multi_worker(model)
    model.compile(
        optimizer=optimizer,
        loss=crossentropy(label_format, kind == "logits"),
        metrics=fresh_metrics(
            metrics,
            binary_logits=label_format == "binary" and kind == "logits",
        ),
    )


def output_shape(model, x):
    """The output shape of `model` on `x`, without the batch axis."""
    return tuple(int(d) for d in model(x, training=False).shape[1:])


class ModelFactory:
    """Builds each generation's fresh model and refuses shared ones.

    Args:
        build_model: Function returning a fresh model (the generations).
        build_teacher: Optional function returning generation 0's model.
        teacher: Optional given teacher.
    """

    def __init__(self, build_model, build_teacher=None, teacher=None):
        self.build_model = build_model
        self.build_teacher = build_teacher
        self.teacher = teacher
        self._known = [] if teacher is None else [teacher]

    def builder(self, generation):
        if generation == 0 and self.build_teacher is not None:
            return self.build_teacher
        return self.build_model

    def adopt(self, model):
        """Remembers a model (a loaded generation) as taken."""
        self._known.append(model)
        return model

    def fresh(self, generation, sample_x):
        """A new model for `generation` (None: a probe), built and checked.

        Raises:
            ValueError: Not a model, a model returned before, or one sharing
                weights with an earlier generation or the teacher.
        """
        model = self.builder(generation)()
        argument = "build_teacher" if (
            generation == 0 and self.build_teacher is not None
        ) else "build_model"
        where = (
            f"for generation {generation}" if generation is not None
            else "on its first call"
        )
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`{argument}` must return a keras.Model; {where} it "
                f"returned {model!r}."
            )
        if any(model is previous for previous in self._known):
            raise ValueError(
                f"`{argument}` returned the model {model.name!r} twice "
                f"({where}): two generations would share one model, so "
                "training the student would change its teacher. Build a "
                "new model on every call."
            )
        if not model.built:
            model(sample_x, training=False)
        known = {id(v) for previous in self._known for v in previous.weights}
        shared = [v.path for v in model.weights if id(v) in known]
        if shared:
            raise ValueError(
                f"The model `{argument}` returned {where} shares weights "
                f"with an earlier generation or the teacher: "
                f"{', '.join(shared[:5])}. Build every model from new layers."
            )
        return self.adopt(model)
