"""Names shared by the chain's files and its monitors (no TensorFlow)."""

DISTILLED_ENSEMBLE_NAME = "gen-ensemble"


class DistilledEnsembleIndex(int):
    """The place in a chain of the student distilled from its ensemble.

    That student trains after generation N, so as a number it is N + 1:
    its seeds, its TensorBoard step and the generation a callbacks function
    receives. Its name is its own (`"gen-ensemble"`, see
    `generation_name`), never that of a generation N + 1.

    Args:
        generations: The chain's number N of student generations.
    """

    __slots__ = ()

    def __new__(cls, generations):
        return super().__new__(cls, int(generations) + 1)

    def __getnewargs__(self):  # copies and pickles keep the same N
        return (int(self) - 1,)


def is_distilled_ensemble(generation):
    """Whether `generation` is the student distilled from the ensemble."""
    return isinstance(generation, DistilledEnsembleIndex)


def generation_name(generation):
    """`"gen-K"`: generation K's folder in a run and its TensorBoard run;
    `"gen-ensemble"` for the student distilled from the ensemble."""
    if is_distilled_ensemble(generation):
        return DISTILLED_ENSEMBLE_NAME
    return f"gen-{int(generation)}"
