"""How per-sample losses become one batch loss, as Keras reduces them."""

from keras import ops


def per_sample(values):
    """Averages any axes after the batch axis: one loss value per sample."""
    values = ops.cast(values, "float32")
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


def weighted_mean(values, sample_weight=None):
    """Keras' "sum_over_batch_size" reduction: sum(values * w) / batch size."""
    values = per_sample(values)
    if sample_weight is not None:
        weight = ops.reshape(ops.cast(sample_weight, values.dtype), (-1,))
        values = values * weight
    batch_size = ops.cast(ops.shape(values)[0], values.dtype)
    return ops.divide_no_nan(ops.sum(values), batch_size)
