"""tf.distribute support: strategies checked, sums over the replicas, and
Keras' multi-worker gaps.

Keras 3's TensorFlow trainer cannot `fit` under MultiWorkerMirroredStrategy
as shipped (keras-team/keras#20585): two of its reductions fail. The
functions here work around them for kdtrain's own models.
"""

import types

import keras
import tensorflow as tf


def _distributed(variable):
    return isinstance(
        getattr(variable, "value", variable), tf.distribute.DistributedValues
    )


def check_strategy(strategy, student):
    """Raises if `student` was not created in `strategy`'s scope.

    Args:
        strategy: The `tf.distribute.Strategy` to train under, or None for
            whatever strategy is in scope.
        student: The model to train.

    Returns:
        The strategy to use: `strategy`, the one in scope, or None.
    """
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is None:
        distributed = [v.path for v in student.weights if _distributed(v)]
        if distributed:
            raise ValueError(
                f"The student {student.name!r} was created under a "
                "distribution strategy, but the Distiller is not: create it "
                "inside the same `strategy.scope()`, or pass `strategy=`."
            )
        return None
    outside = [
        v.path for v in student.weights
        if not strategy.extended.variable_created_in_scope(
            getattr(v, "value", v)
        )
    ]
    if outside:
        raise ValueError(
            f"The student {student.name!r} was created outside the scope of "
            f"the {type(strategy).__name__} it should train under (e.g. "
            f"{', '.join(outside[:3])}), so its variables are not "
            "distributed. Create the strategy first and build the models "
            "inside `with strategy.scope():` (a GenerationRunner does this "
            "itself when given `strategy=`)."
        )
    return strategy


def replica_sum(value):
    """Sums `value` over the replicas that each hold a share of the batch.

    Inside a step run by a `tf.distribute` strategy with several replicas,
    each replica sees its own share of the global batch; a quantity
    normalized over the batch (a sum of weights, the batch size) must be
    summed over all of them to mean what it means on one device. Anywhere
    else (one replica, or no strategy) it returns `value` unchanged.

    Args:
        value: A tensor computed by each replica on its share.

    Returns:
        The sum of `value` over the replicas in sync.

    Example:

    >>> global_batch = replica_sum(keras.ops.cast(batch_size, "float32"))
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def is_multi_worker(strategy):
    """Whether `strategy` trains over several worker processes."""
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def _local(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _symbolic_build_locally(model, iterator=None, data_batch=None):
    """Keras' `_maybe_symbolic_build`, reading the first local replica.

    Keras 3 reduces the first batch across replicas with `strategy.reduce`,
    which MultiWorkerMirroredStrategy refuses for a structure
    (keras-team/keras#20585); one replica's batch has the shapes needed.
    """
    strategy = model.distribute_strategy
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: _local(v, strategy), next(batches)
            )
            break
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def _reduce_logs(reduce):
    """Keras' `reduce_per_replica`, with scalar logs for multi-worker means.

    Keras 3 averages multi-worker logs with `strategy.reduce("MEAN", v,
    axis=0)`, which fails on scalars (keras-team/keras#20585): the logs are
    the metrics' results, the same on every replica, reduced with axis=None.
    """

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if isinstance(v, tf.distribute.DistributedValues) else v,
                values,
            )
        return reduce(values, strategy, reduction)

    reduce_per_replica.kdtrain_patch = True
    return reduce_per_replica


def support_multi_worker(model):
    """Lets `model.fit` / `evaluate` run under MultiWorkerMirroredStrategy.

    Keras 3's TensorFlow trainer fails there (keras-team/keras#20585); this
    works around its two failing reductions, for `model` and for the
    process. Nothing changes for other strategies.

    Args:
        model: A `keras.Model` created under the strategy's scope.

    Returns:
        `model`.
    """
    if not is_multi_worker(model.distribute_strategy):
        return model
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not getattr(tf_trainer.reduce_per_replica, "kdtrain_patch", False):
        tf_trainer.reduce_per_replica = _reduce_logs(
            tf_trainer.reduce_per_replica
        )
    model._maybe_symbolic_build = types.MethodType(
        _symbolic_build_locally, model
    )
    return model
