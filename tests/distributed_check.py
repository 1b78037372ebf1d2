"""Trains the same distiller on one device and under a strategy; prints JSON.

Run as a script (a fresh process), because logical devices and a
`MultiWorkerMirroredStrategy` must be set up before TensorFlow starts:

    python distributed_check.py mirrored        # two logical CPUs
    python distributed_check.py mirrored_cache  # cache + GenerationRunner
    python distributed_check.py mirrored_cwtm   # CWTM, uneven last batch
    python distributed_check.py mirrored_hints  # hints, compiled outside
    python distributed_check.py mirrored_logit_losses  # DKD, NKD, DIST, LS
    python distributed_check.py multi_worker    # two worker processes

`multi_worker` trains a distiller and a chain on two workers; worker 1 kills
itself early in generation 2, so the chain must fail on worker 0 with a clear
error and keep generations 0 and 1 on disk. It starts the workers on 127.0.0.1 (`TF_CONFIG`, free
ports), wait at most `TIMEOUT` seconds and always kill them at the end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 2
TIMEOUT = 3600  # a hang guard only


def split_cpu(count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 4, size=64)
    weights = rng.uniform(0.5, 1.5, size=64).astype("float32")
    return x, y, weights


def models():
    import keras

    rng = np.random.default_rng(1)

    def dense_net(hidden, activation):
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(4, activation=activation),
            ]
        )
        model.set_weights(
            [rng.normal(scale=0.5, size=w.shape).astype("float32")
             for w in model.get_weights()]
        )
        return model

    return dense_net(16, "softmax"), dense_net(12, None)


def train(cached=False, strategy=None):
    import keras

    import kdtrain

    teacher, student = models()
    initial = [w.tolist() for w in student.get_weights()]
    distiller = kdtrain.Distiller(student, teacher, strategy=strategy)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        distillation_loss=kdtrain.losses.KLDivergence(2.0),
        ground_truth_weight=0.3,
        metrics=["accuracy"],
    )
    x, y, weights = data()
    if cached:
        cache = kdtrain.TeacherOutputCache.compute(teacher, x)
        dataset = cache.dataset(x, y, weights, batch_size=16, shuffle=False)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    history = distiller.fit(dataset, epochs=3, verbose=0)
    return {
        "history": history.history,
        "weights": [w.tolist() for w in student.get_weights()],
    }, initial


def build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(4),
        ]
    )


def run_chain(strategy=None, directory=None, callbacks=None):
    """A 2-generation chain; returns each generation's history and weights."""
    import kdtrain

    x, y, _ = data()
    runner = kdtrain.GenerationRunner(
        build_model, generations=2, seed=0, verbose=0, directory=directory,
        optimizer={"class_name": "SGD", "config": {"learning_rate": 0.1}},
        ground_truth_weight=0.3, strategy=strategy, progress=False,
        tensorboard=False,
    )
    result = runner.run((x, y), epochs=2, batch_size=16, shuffle=False,
                        callbacks=callbacks)
    return {
        "cached": runner.cache_used,
        "history": {k: v.history for k, v in result.histories.items()},
        "weights": {
            name: [w.tolist() for w in model.get_weights()]
            for name, model in zip(result.names, result.models)
        },
    }


def strategy_after_models_error():
    """The message a Distiller gives a student built before the strategy."""
    import kdtrain

    teacher, student = models()
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    try:
        kdtrain.Distiller(student, teacher, strategy=strategy)
    except ValueError as error:
        return str(error)
    return None


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(role, directory):
    """Starts the worker processes; returns them with their log files."""
    ports = free_ports(REPLICAS)
    workers = []
    for index in range(REPLICAS):
        config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        log = open(os.path.join(directory, f"worker-{index}.log"), "w+")
        process = subprocess.Popen(
            [sys.executable, __file__, role, directory],
            env={**os.environ, "TF_CONFIG": json.dumps(config)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        workers.append((process, log))
    return workers


def wait_for(workers, timeout):
    """Waits for the workers (at most `timeout` s in all); returns their codes."""
    deadline = time.monotonic() + timeout
    codes = []
    for process, _ in workers:
        try:
            codes.append(process.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def stop(workers):
    for process, log in workers:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def read_log(workers, index):
    log = workers[index][1]
    log.seek(0)
    return log.read()


class _DieInGeneration2:
    """A callback factory: worker 1 kills itself early in generation 2."""

    def __call__(self, generation):
        import keras

        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        if generation != 2 or index != 1:
            return []

        class Die(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        return [Die()]


def worker(directory):
    """One worker: a distiller, then a chain that loses worker 1."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=10
        )
    )
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with strategy.scope():
        distributed, _ = train()
    with open(os.path.join(directory, f"result-{index}.json"), "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync,
                   "distributed": distributed}, f)
    run_chain(strategy, os.path.join(directory, "chain"),
              callbacks=_DieInGeneration2())


def multi_worker():
    import keras

    with tempfile.TemporaryDirectory() as directory:
        workers = start_workers("worker", directory)
        try:
            codes = wait_for(workers, TIMEOUT)
            log = read_log(workers, 0)
        finally:
            stop(workers)
        with open(os.path.join(directory, "result-0.json")) as f:
            report = json.load(f)
        chain = os.path.join(directory, "chain")
        records = {}
        for name, folder in (("teacher", "gen-0"), ("gen-1", "gen-1")):
            with open(os.path.join(chain, folder, "record.json")) as f:
                records[name] = json.load(f)
        report["chain"] = {
            "files": sorted(
                os.path.relpath(os.path.join(root, name), chain)
                for root, _, names in os.walk(chain) for name in names
            ),
            "records": records,
            "weights": {
                name: [w.tolist() for w in keras.saving.load_model(
                    os.path.join(chain, name, "model.keras")
                ).get_weights()]
                for name in ("gen-0", "gen-1")
            },
        }
    single, initial = train()
    report.update(codes=codes, log=log[-3000:], single=single,
                  initial=initial, single_chain=run_chain())
    return report


def mirrored_cache():
    split_cpu(REPLICAS)
    single, _ = train(cached=True)
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    with strategy.scope():
        distributed, _ = train(cached=True)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "single": single,
        "distributed": distributed,
        "single_chain": run_chain(),
        "chain": run_chain(strategy),
        "strategy_after_models": strategy_after_models_error(),
    }


CWTM_SAMPLES = 21  # Batches of 8, 8 and 5: two replicas split 5 as 3 and 2.


def train_cwtm(strategy=None):
    """Two epochs of CWTM mixed with the labels: history and weights."""
    import keras

    import kdtrain

    teacher, student = models()
    distiller = kdtrain.Distiller(student, teacher, strategy=strategy)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        distillation_loss="cwtm",
        ground_truth_weight=0.25,
        metrics=["accuracy"],
    )
    x, y, _ = data()
    dataset = tf.data.Dataset.from_tensor_slices(
        (x[:CWTM_SAMPLES], y[:CWTM_SAMPLES])
    ).batch(8)
    history = distiller.fit(dataset, epochs=2, verbose=0)
    return {
        "history": history.history,
        "weights": [w.tolist() for w in student.get_weights()],
    }


def mirrored_cwtm():
    """CWTM on one device and on two replicas, with what a reference needs."""
    split_cpu(REPLICAS)
    teacher, student = models()
    x, y, _ = data()
    single = train_cwtm()
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    with strategy.scope():
        distributed = train_cwtm(strategy)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "single": single,
        "distributed": distributed,
        "teacher": [w.tolist() for w in teacher.get_weights()],
        "initial": [w.tolist() for w in student.get_weights()],
        "x": x[:CWTM_SAMPLES].tolist(),
        "y": y[:CWTM_SAMPLES].tolist(),
    }


def train_hints(strategy=None):
    """A hint between the hidden layers, the Distiller compiled outside the
    strategy's scope; returns history, student and adapter weights."""
    import contextlib

    import keras

    import kdtrain

    with strategy.scope() if strategy else contextlib.nullcontext():
        teacher, student = models()
        distiller = kdtrain.Distiller(student, teacher, strategy=strategy)
    pair = (student.layers[0].name, teacher.layers[0].name)
    keras.utils.set_random_seed(0)  # The adapter's initial weights.
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        distillation_loss=kdtrain.losses.KLDivergence(2.0),
        ground_truth_weight=0.3,
        feature_losses=[kdtrain.losses.HintLoss([pair])],
    )
    x, y, weights = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    history = distiller.fit(dataset, epochs=2, verbose=0)
    (adapter,) = distiller.hint_adapters
    return {
        "history": history.history,
        "weights": [w.tolist() for w in
                    student.get_weights() + adapter.get_weights()],
        "adapter_distributed": all(
            isinstance(v.value, tf.distribute.DistributedValues)
            for v in adapter.weights
        ),
    }


def mirrored_hints():
    split_cpu(REPLICAS)
    single = train_hints()
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    return {
        "replicas": strategy.num_replicas_in_sync,
        "single": single,
        "distributed": train_hints(strategy),
    }


LOGIT_LOSSES = ("dkd", "nkd", "dist", "kl_standardized")


def train_logit_loss(name, strategy=None):
    """Two epochs of a logit loss (a name, or "kl_standardized" for
    `KLDivergence(2.0, standardize=True)`) mixed with the labels, on 21
    weighted samples (weights with zeros; batches of 8, 8 and 5, split 4/4
    and 3/2 over two replicas): history and weights."""
    import keras

    import kdtrain

    teacher, student = models()
    distiller = kdtrain.Distiller(student, teacher, strategy=strategy)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        distillation_loss=(
            kdtrain.losses.KLDivergence(2.0, standardize=True)
            if name == "kl_standardized" else name
        ),
        ground_truth_weight=0.25,
        metrics=["accuracy"],
    )
    x, y, weights = data()
    weights = weights.copy()
    weights[::4] = 0.0
    dataset = tf.data.Dataset.from_tensor_slices(
        (x[:CWTM_SAMPLES], y[:CWTM_SAMPLES], weights[:CWTM_SAMPLES])
    ).batch(8)
    history = distiller.fit(dataset, epochs=2, verbose=0)
    return {
        "history": history.history,
        "weights": [w.tolist() for w in student.get_weights()],
    }


def dist_batch():
    """A batch of logits with weights (zeros among them) for DIST."""
    rng = np.random.default_rng(2)
    teacher = rng.normal(scale=3.0, size=(8, 4)).astype("float32")
    student = rng.normal(scale=3.0, size=(8, 4)).astype("float32")
    weights = np.array([1, 0, 2, 1, 3, 0, 1, 2], "float32")
    return teacher, student, weights


DIST_SPLIT = 5  # replica 0 holds rows [:5], replica 1 rows [5:]


def dist_value(strategy=None):
    """DIST's batch loss as the Distiller reduces it: each replica's
    weighted mean times its share of the batch, summed over the replicas."""
    from keras import ops

    import kdtrain
    from kdtrain.distribute import replica_sum
    from kdtrain.losses.reduction import weighted_mean

    loss = kdtrain.losses.CorrelationKD(beta=1.0, gamma=2.0)
    teacher, student, weights = dist_batch()

    def step(t, s, w):
        value = weighted_mean(loss.call(t, s, sample_weight=w), w)
        size = ops.cast(ops.shape(t)[0], "float32")
        return value * size / replica_sum(size)

    if strategy is None:
        return float(step(teacher, student, weights))

    def shard(context):
        rows = (slice(0, DIST_SPLIT) if context.replica_id_in_sync_group == 0
                else slice(DIST_SPLIT, None))
        return teacher[rows], student[rows], weights[rows]

    values = strategy.experimental_distribute_values_from_function(shard)
    per_replica = strategy.run(lambda batch: step(*batch), args=(values,))
    return float(strategy.reduce("SUM", per_replica, axis=None))


def mirrored_logit_losses():
    """DKD, NKD, DIST and standardized KL on one device and on two
    replicas; DIST's value on a batch split unevenly over the replicas."""
    split_cpu(REPLICAS)
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    report = {"replicas": strategy.num_replicas_in_sync,
              "single": {}, "distributed": {}}
    for name in LOGIT_LOSSES:
        report["single"][name] = train_logit_loss(name)
        with strategy.scope():
            report["distributed"][name] = train_logit_loss(name, strategy)
    teacher, student, weights = dist_batch()
    report["dist_batch"] = {"teacher": teacher.tolist(),
                            "student": student.tolist(),
                            "weights": weights.tolist(),
                            "split": DIST_SPLIT}
    report["dist_single"] = dist_value()
    report["dist_distributed"] = dist_value(strategy)
    return report


def main(mode):
    if mode == "worker":
        return worker(sys.argv[2])
    if mode in ("multi_worker", "mirrored_cache", "mirrored_cwtm",
                "mirrored_hints", "mirrored_logit_losses"):
        report = globals()[mode]()
        print(json.dumps(report))
        return None
    if mode != "mirrored":
        raise SystemExit(f"unknown mode {mode!r}")
    split_cpu(REPLICAS)
    single, initial = train()
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(REPLICAS)]
    )
    with strategy.scope():
        distributed, _ = train()
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "single": single,
                "distributed": distributed,
                "initial": initial,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
