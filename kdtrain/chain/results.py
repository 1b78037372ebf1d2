"""A chain's results: model names, the results table and `GenerationResult`."""

from kdtrain.callbacks.names import DistilledEnsembleIndex
from kdtrain.callbacks.names import generation_name
from kdtrain.callbacks.names import is_distilled_ensemble
# The table's helpers live with the report, which reads runs without
# TensorFlow.
from kdtrain.report import default_split
from kdtrain.report import markdown_table
from kdtrain.report import table_splits


DISTILLED_ENSEMBLE_LABEL = "Ensemble-distilled"


def distilled_ensemble_index(generations):
    """The index of the student distilled from the ensemble of generations
    1..N: N + 1 as a number, `"gen-ensemble"` by name."""
    return DistilledEnsembleIndex(generations)


def model_name(generation):
    """`"teacher"` for generation 0, else `"gen-K"` (its folder's name), or
    `"gen-ensemble"` for the student distilled from the ensemble."""
    return "teacher" if generation == 0 else generation_name(generation)


def model_label(generation):
    """The report's column header: `"Teacher"`, `"BAN-1"`, `"BAN-2"`...,
    `"Ensemble-distilled"`."""
    if is_distilled_ensemble(generation):
        return DISTILLED_ENSEMBLE_LABEL
    return "Teacher" if generation == 0 else f"BAN-{generation}"


def describe_model(generation, capital=False):
    """How messages name a model: `"generation 2 (BAN-2)"`, or `"the
    student distilled from the ensemble (Ensemble-distilled)"`; with
    `capital`, to start a sentence."""
    if is_distilled_ensemble(generation):
        text = ("the student distilled from the ensemble "
                f"({DISTILLED_ENSEMBLE_LABEL})")
    else:
        text = f"generation {generation} ({model_label(generation)})"
    return text[:1].upper() + text[1:] if capital else text


ENSEMBLE_NAMES = {
    "ensemble": "Ensemble",
    "ensemble_with_teacher": "Ensemble + teacher",
}


class GenerationResult:
    """What a `GenerationRunner` produced.

    Attributes:
        models: `[teacher, gen-1, ..., gen-N]`.
        names: `["teacher", "gen-1", ..., "gen-N"]`.
        ensemble: The `GenerationEnsemble` of the students.
        ensemble_with_teacher: The `GenerationEnsemble` of all the models.
        distilled_ensemble: With `distill_ensemble=True`, the student
            distilled from `ensemble` (a single model, named
            `"gen-ensemble"` in the table); else None.
        table: A list of rows (dicts), one per model or ensemble and split,
            with `name`, `label` (the report's header), `split`, the metrics
            (`accuracy`, `loss`...), `params` and `wall_time` (training
            seconds; for an ensemble, its members' total).
        histories: Per model name (`"gen-ensemble"` included), the
            `keras.callbacks.History` of its training (all epochs, also
            across a resume); None for a teacher that was passed in.
        directory: The chain's directory, or None.
        config: The configuration that identifies the chain.

    Example:

    ```python
    result = runner.run((x, y), test_data=(x_test, y_test), epochs=10)
    print(result.to_markdown())
    result.ensemble.save("ensemble.keras")
    ```
    """

    def __init__(self, models, ensemble, ensemble_with_teacher, table,
                 histories, directory=None, config=None,
                 distilled_ensemble=None):
        self.models = list(models)
        self.names = [model_name(k) for k in range(len(self.models))]
        self.ensemble = ensemble
        self.ensemble_with_teacher = ensemble_with_teacher
        self.distilled_ensemble = distilled_ensemble
        self.table = table
        self.histories = histories
        self.directory = directory
        self.config = config

    @property
    def students(self):
        """`[gen-1, ..., gen-N]`."""
        return self.models[1:]

    @property
    def splits(self):
        """The data splits the table has rows for."""
        return table_splits(self.table)

    def row(self, name, split=None):
        """The table row of model or ensemble `name` on `split`."""
        split = split or default_split(self.table)
        for row in self.table:
            if row["name"] == name and row["split"] == split:
                return row
        raise KeyError(f"No row for {name!r} on {split!r}.")

    def to_markdown(self, split=None, metrics=("accuracy", "loss"), digits=4):
        """The report's table: a column per model, a row per metric.

        Args:
            split: `"test"`, `"validation"` or `"train"`. Defaults to the
                first of these the table has.
            metrics: The metrics shown, one row each.
            digits: Decimals shown.

        Returns:
            A Markdown table with the columns Teacher, BAN-1 ... BAN-N,
            Ensemble, Ensemble + teacher (and Ensemble-distilled).
        """
        return markdown_table(self.table, split, metrics, digits)

    def __repr__(self):
        return (
            f"<GenerationResult {len(self.models)} models, "
            f"directory={self.directory!r}>"
        )
