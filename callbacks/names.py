"""Names shared by the chain's files and its monitors (no TensorFlow)."""


def generation_name(generation):
    """`"gen-K"`: generation K's folder in a run and its TensorBoard run."""
    return f"gen-{int(generation)}"
