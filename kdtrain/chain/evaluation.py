"""Evaluating a chain's models and ensembles into the results table."""

import keras
import numpy as np

from kdtrain import inference
from kdtrain.chain.callbacks import float_logs
from kdtrain.chain.models import fresh_metrics
from kdtrain.chain.results import ENSEMBLE_NAMES
from kdtrain.distribute import support_multi_worker
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.outputs import to_probabilities
from kdtrain.pipelines import array_batches
from kdtrain.pipelines import concatenate_batches
from kdtrain.pipelines import materialize
from kdtrain.faults import fault_point
from kdtrain.outputs import crossentropy


def _split_arrays(split):
    """`(x, y, sample_weight, batch_size)` of a split, read once.

    A dataset may come in a new order (or with new draws) on every pass:
    every model and ensemble must be scored on the same samples, against
    their own labels, so a dataset or `PyDataset` is read into arrays once.
    """
    if split.kind == "arrays":
        return split.x, split.y, split.sample_weight, split.batch_size or 32
    if split.kind == "dataset":
        return materialize(split.data)
    return concatenate_batches([
        keras.utils.unpack_x_y_sample_weight(split.data[i])
        for i in range(split.data.num_batches)
    ])


class SplitProbabilities:
    """Each model's class probabilities on a split, computed once.

    A model runs through its traced inference function
    (`kdtrain.inference`), so evaluating it, and then every ensemble it is
    part of, traces no new graph: an ensemble's probabilities are the mean
    of its members', as `GenerationEnsemble` computes them.

    Args:
        split: A labeled `DataSplit`.
    """

    def __init__(self, split):
        self.split = split
        self.x = self.y = self.sample_weight = self.batch_size = None
        self._by_generation = {}

    def of(self, generation):
        """A `Generation`'s float32 probabilities on every sample of the
        split (kept by generation: its model object may be reused)."""
        if self.x is None:
            self.x, self.y, self.sample_weight, self.batch_size = (
                _split_arrays(self.split)
            )
        if generation.index not in self._by_generation:
            model, kind = generation.model, generation.output_kind
            self._by_generation[generation.index] = np.concatenate([
                keras.ops.convert_to_numpy(
                    to_probabilities(inference.outputs(model, x), kind)
                )
                for x in array_batches(self.x, self.batch_size)
            ])
        return self._by_generation[generation.index]

    def ensemble(self, generations):
        """The mean of the members' probabilities (a `GenerationEnsemble`)."""
        members = [self.of(g) for g in generations]
        return keras.ops.convert_to_numpy(
            keras.ops.mean(keras.ops.stack(members, axis=0), axis=0)
        )


class ProbabilityMetrics:
    """The chain's metrics and crossentropy of given probabilities.

    Keras' own `evaluate` on a model that passes its inputs through, so the
    loss and every metric (strings such as `"accuracy"` resolved by the
    labels' format, as `compile` does) are computed exactly as for a model;
    its graph is traced once for all the models of a chain.

    Args:
        label_format: The labels' format, for the crossentropy.
        metrics: The chain's metrics.
    """

    def __init__(self, label_format, metrics):
        self.label_format = label_format
        self.metrics = metrics
        self._models = {}

    def __call__(self, probabilities, y, sample_weight, batch_size):
        """`{metric: value}` of `probabilities` against `y`."""
        classes = probabilities.shape[-1]
        model = self._models.get(classes)
        if model is None:
            model = keras.Sequential(
                [keras.Input((classes,)), keras.layers.Identity()],
                name="probabilities",
            )
            support_multi_worker(model)
            model.compile(
                loss=crossentropy(self.label_format, from_logits=False),
                metrics=fresh_metrics(self.metrics),
            )
            self._models[classes] = model
        return float_logs(model.evaluate(
            probabilities, y, sample_weight=sample_weight,
            batch_size=batch_size, verbose=0, return_dict=True,
        ))


def metric_names(metrics):
    """The log names the chain's metrics produce, `loss` included."""
    names = {"loss"}
    for metric in metrics:
        if isinstance(metric, str):
            names.add("accuracy" if metric in ("acc", "accuracy") else metric)
        elif hasattr(metric, "name"):
            names.add(metric.name)
    return names


def is_complete(evaluation, splits, metrics):
    """Whether a stored evaluation covers these splits and metrics."""
    return bool(evaluation) and set(evaluation) == set(splits) and all(
        metric_names(metrics) <= set(values) for values in evaluation.values()
    )


class ChainEvaluation:
    """Evaluates the generations and their ensembles into table rows.

    Args:
        splits: The `DataSplit`s of the table, by name.
        label_format: The labels' format.
        metrics: The chain's metrics.
        events: Receives `on_evaluation` for every evaluation, or None.
    """

    def __init__(self, splits, label_format, metrics, events=None):
        self.splits = splits
        self.label_format = label_format
        self.metrics = metrics
        self.events = events
        self._probabilities = {
            name: SplitProbabilities(split) for name, split in splits.items()
        }
        self._metrics = ProbabilityMetrics(label_format, metrics)

    def _evaluate(self, probabilities_of):
        """`{split: metrics}` of the probabilities `probabilities_of(split)`
        gives for each split's `SplitProbabilities`."""
        evaluation = {}
        for name, split in self._probabilities.items():
            probabilities = probabilities_of(split)
            evaluation[name] = self._metrics(
                probabilities, split.y, split.sample_weight, split.batch_size,
            )
        return evaluation

    def model(self, generation, recompute=False):
        """The evaluation of one `Generation` (its record's when complete)."""
        stored = generation.record.get("evaluation")
        if not recompute and is_complete(stored, self.splits, self.metrics):
            return stored
        fault_point("evaluate.model")
        evaluation = self._evaluate(
            lambda split: split.of(generation)
        )
        self._announce(generation.index, generation.name, evaluation)
        return evaluation

    def _announce(self, step, name, evaluation):
        if self.events is not None:
            for split, values in evaluation.items():
                self.events.on_evaluation(
                    step, {"name": name, "split": split, "metrics": values}
                )

    def table(self, generations, recompute=False, distilled_ensemble=None):
        """The table of `generations`, their two ensembles and, when given,
        the student distilled from the ensemble (a `Generation`, last).

        Returns:
            `(table, ensemble, ensemble_with_teacher)`: rows as in
            `GenerationResult.table`, and the two `GenerationEnsemble`s.
        """
        table = []
        for generation in generations:
            evaluation = self.model(generation, recompute)
            for split in self.splits:
                table.append(self._row(generation.name, generation.label,
                                       split, evaluation[split], [generation]))
        ensemble, with_teacher = self.ensembles(generations)
        for name, members in (
            ("ensemble", generations[1:]),
            ("ensemble_with_teacher", generations),
        ):
            if not self.splits:
                continue
            fault_point("evaluate.ensemble")
            evaluation = self._evaluate(lambda split: split.ensemble(members))
            self._announce(generations[-1].index, name, evaluation)
            for split in self.splits:
                table.append(self._row(name, ENSEMBLE_NAMES[name], split,
                                       evaluation[split], members))
        if distilled_ensemble is not None:  # one model: its own column
            evaluation = self.model(distilled_ensemble, recompute)
            for split in self.splits:
                table.append(self._row(
                    distilled_ensemble.name, distilled_ensemble.label, split,
                    evaluation[split], [distilled_ensemble],
                ))
        return table, ensemble, with_teacher

    @staticmethod
    def ensembles(generations):
        """The ensemble of the students and the one with the teacher."""
        models = [g.model for g in generations]
        kinds = [g.output_kind for g in generations]
        return (
            GenerationEnsemble(models[1:], outputs=kinds[1:], name="ensemble"),
            GenerationEnsemble(models, outputs=kinds,
                               name="ensemble_with_teacher"),
        )

    @staticmethod
    def _row(name, label, split, values, members):
        times = [g.record.get("wall_time") for g in members]
        times = [t for t in times if t is not None]
        return {
            "name": name,
            "label": label,
            "split": split,
            **values,
            "params": int(sum(g.model.count_params() for g in members)),
            "wall_time": sum(times) if times else None,
        }
