"""Evaluating a chain's models and ensembles into the results table."""

from kdtrain.chain.callbacks import float_logs
from kdtrain.chain.models import fresh_metrics
from kdtrain.chain.results import ENSEMBLE_NAMES
from kdtrain.distribute import support_multi_worker
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.faults import fault_point
from kdtrain.outputs import crossentropy


def evaluate(model, splits, label_format, metrics, kind=None):
    """Metrics of a model's (or an ensemble's) probabilities on each split.

    Args:
        model: A `keras.Model` (with its output `kind`) or a
            `GenerationEnsemble`.
        splits: `DataSplit`s by name.
        label_format: The labels' format, for the crossentropy.
        metrics: The chain's metrics.
        kind: `"logits"` or `"probabilities"`, for a single model.

    Returns:
        `{split: {metric: value}}`, with the crossentropy as `loss`.
    """
    if not splits:
        return {}
    if not isinstance(model, GenerationEnsemble):
        model = GenerationEnsemble([model], outputs=[kind], name="single")
    support_multi_worker(model)
    model.compile(
        loss=crossentropy(label_format, from_logits=False),
        metrics=fresh_metrics(metrics),
    )
    return {
        split: float_logs(model.evaluate(
            **data.fit_arguments(), verbose=0, return_dict=True
        ))
        for split, data in splits.items()
    }


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

    def model(self, generation, recompute=False):
        """The evaluation of one `Generation` (its record's when complete)."""
        stored = generation.record.get("evaluation")
        if not recompute and is_complete(stored, self.splits, self.metrics):
            return stored
        fault_point("evaluate.model")
        evaluation = evaluate(generation.model, self.splits,
                              self.label_format, self.metrics,
                              generation.output_kind)
        self._announce(generation.index, generation.name, evaluation)
        return evaluation

    def _announce(self, step, name, evaluation):
        if self.events is not None:
            for split, values in evaluation.items():
                self.events.on_evaluation(
                    step, {"name": name, "split": split, "metrics": values}
                )

    def table(self, generations, recompute=False):
        """The table of `generations` and their two ensembles.

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
        for name, model, members in (
            ("ensemble", ensemble, generations[1:]),
            ("ensemble_with_teacher", with_teacher, generations),
        ):
            if not self.splits:
                continue
            fault_point("evaluate.ensemble")
            evaluation = evaluate(model, self.splits, self.label_format,
                                  self.metrics)
            self._announce(generations[-1].index, name, evaluation)
            for split in self.splits:
                table.append(self._row(name, ENSEMBLE_NAMES[name], split,
                                       evaluation[split], members))
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
