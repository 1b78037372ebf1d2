"""tf.distribute: MirroredStrategy over two logical CPUs, and
MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Each check runs `distributed_check.py` in fresh processes (devices and
strategies must be set up before TensorFlow starts) and compares with a
single-device run of the same training: logged losses (never scaled by the
number of replicas) and weights.
"""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import HANG_GUARD

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_check.py")


def check(mode):
    result = subprocess.run(
        [sys.executable, SCRIPT, mode], capture_output=True, text=True,
        timeout=HANG_GUARD, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_history(actual, expected):
    assert set(actual) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(actual[key], values, rtol=1e-4, atol=1e-6,
                                   err_msg=key)


def assert_same_weights(actual, expected):
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4,
                                   atol=1e-6)


def assert_same_training(report):
    """The strategy's distiller logged and learned what one device did."""
    assert report["replicas"] == 2
    assert_same_history(report["distributed"]["history"],
                        report["single"]["history"])
    assert_same_weights(report["distributed"]["weights"],
                        report["single"]["weights"])


def test_mirrored_cached_distiller_and_runner_match_one_device():
    report = check("mirrored_cache")
    assert_same_training(report)
    chain, single = report["chain"], report["single_chain"]
    assert chain["cached"] and single["cached"]
    for name in ("teacher", "gen-1", "gen-2"):
        assert_same_history(chain["history"][name], single["history"][name])
        assert_same_weights(chain["weights"][name], single["weights"][name])
    message = report["strategy_after_models"]
    assert "created outside the scope of the MirroredStrategy" in message
    assert "inside `with strategy.scope():`" in message


def test_multi_worker_matches_one_device_and_survives_a_dead_worker():
    report = check("multi_worker")
    assert_same_training(report)
    # The weights moved: the check compares training, not initial weights.
    assert not np.allclose(report["single"]["weights"][0],
                           report["initial"][0])
    # Worker 1 died in generation 2: worker 0 failed with a clear error...
    assert report["codes"][0] not in (0, None), report["log"]
    assert "WorkerFailure: Generation 2 (BAN-2) stopped" in report["log"]
    assert "lost contact with another worker" in report["log"]
    chain, single = report["chain"], report["single_chain"]
    # ...and the finished generations stayed on disk, equal to one device's,
    # while generation 2 did not finish (no record, no results).
    assert {"gen-0/model.keras", "gen-1/model.keras"} <= set(chain["files"])
    assert "gen-2/record.json" not in chain["files"]
    assert "results.json" not in chain["files"]
    for name, generation in (("teacher", "gen-0"), ("gen-1", "gen-1")):
        assert_same_history(chain["records"][name]["history"],
                            single["history"][name])
        assert_same_weights(chain["weights"][generation],
                            single["weights"][name])


def cwtm_reference(report, epochs=2, batch_size=8, learning_rate=0.1,
                   ground_truth_weight=0.25):
    """BAN eq. 4 by hand on one device: plain TF ops, a tape, plain SGD.

    Per batch, `w_s = max p_teacher(x_s) / sum_u max p_teacher(x_u)` and the
    loss is `(1 - g) * sum_s w_s CE_s + g * mean_s CE_s`; the logs are epoch
    means of the batch values weighted by the batch sizes, as Keras logs.
    """
    import tensorflow as tf

    x = np.asarray(report["x"], "float32")
    y = np.asarray(report["y"], "int64")
    teacher = [tf.constant(np.float32(w)) for w in report["teacher"]]
    student = [tf.Variable(np.float32(w)) for w in report["initial"]]

    def logits(weights, inputs):
        hidden = tf.nn.relu(inputs @ weights[0] + weights[1])
        return hidden @ weights[2] + weights[3]

    names = ("loss", "distillation_loss", "ground_truth_loss", "accuracy")
    history = {name: [] for name in names}
    for _ in range(epochs):
        sums = dict.fromkeys(names, 0.0)
        for start in range(0, len(x), batch_size):
            inputs = x[start:start + batch_size]
            labels = y[start:start + batch_size]
            teacher_probabilities = tf.nn.softmax(logits(teacher, inputs))
            confidence = tf.reduce_max(teacher_probabilities, -1)
            weights = confidence / tf.reduce_sum(confidence)
            with tf.GradientTape() as tape:
                outputs = logits(student, inputs)
                crossentropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels, outputs
                )
                cwtm = tf.reduce_sum(weights * crossentropy)
                ground_truth = tf.reduce_mean(crossentropy)
                loss = ((1.0 - ground_truth_weight) * cwtm
                        + ground_truth_weight * ground_truth)
            gradients = tape.gradient(loss, student)
            for variable, gradient in zip(student, gradients):
                variable.assign_sub(learning_rate * gradient)
            accuracy = np.mean(np.argmax(outputs.numpy(), -1) == labels)
            values = (loss, cwtm, ground_truth, accuracy)
            for name, value in zip(names, values):
                sums[name] += len(inputs) * float(value)
        for name in names:
            history[name].append(sums[name] / len(x))
    return history, [variable.numpy() for variable in student]


def test_mirrored_cwtm_normalizes_over_the_global_batch():
    """CWTM's weights sum to 1 over the global batch, not per replica, so
    two replicas (batches of 8, then 5 split as 3 and 2) log and learn what
    one device does, and both follow eq. 4 computed by hand."""
    report = check("mirrored_cwtm")
    assert report["replicas"] == 2
    expected_history, expected_weights = cwtm_reference(report)
    for run in ("single", "distributed"):
        history, weights = report[run]["history"], report[run]["weights"]
        assert set(history) == set(expected_history)
        for key, values in expected_history.items():
            np.testing.assert_allclose(history[key], values, rtol=1e-5,
                                       err_msg=f"{run} {key}")
        for actual, expected in zip(weights, expected_weights):
            np.testing.assert_allclose(np.array(actual), expected, rtol=1e-5,
                                       atol=1e-6, err_msg=run)
    # The weights moved: the check compares training, not initial weights.
    assert not np.allclose(expected_weights[0], report["initial"][0])


def test_mirrored_hints_compiled_outside_the_scope_match_one_device():
    """Adapters made by `compile` outside `strategy.scope()` are still the
    strategy's variables, and train as on one device."""
    report = check("mirrored_hints")
    assert report["distributed"]["adapter_distributed"]
    assert not report["single"]["adapter_distributed"]
    assert_same_training(report)


def test_mirrored_dkd_nkd_dist_and_standardized_kl_match_one_device():
    """DKD and NKD (per-sample, with labels), KL on standardized logits,
    and DIST (whose intra-class
    term correlates the columns over the batch) log and learn on two
    replicas what one device does, with weights that include zeros and an
    uneven last batch: DIST's column sums are summed over the replicas, and
    its gradients flow back through those sums."""
    from test_losses import ref_dist

    report = check("mirrored_logit_losses")
    assert report["replicas"] == 2
    for name in ("dkd", "nkd", "dist", "kl_standardized"):
        single = report["single"][name]
        distributed = report["distributed"][name]
        assert_same_history(distributed["history"], single["history"])
        assert_same_weights(distributed["weights"], single["weights"])
    # DIST on one batch of 8 split 5/3 over the replicas: the global batch's
    # DIST (integer weights repeat samples, scaled by sum(w) / 8), not the
    # mean of what each replica would compute on its own rows.
    batch = report["dist_batch"]
    teacher, student = np.array(batch["teacher"]), np.array(batch["student"])
    weights = np.array(batch["weights"]).astype(int)

    def weighted_dist(rows):
        repeat = np.repeat(rows, weights[rows])
        return weights[rows].sum() / len(rows) * ref_dist(
            student[repeat], teacher[repeat], beta=1.0, gamma=2.0)

    everything = np.arange(8)
    expected = weighted_dist(everything)
    np.testing.assert_allclose(report["dist_single"], expected, rtol=1e-5)
    np.testing.assert_allclose(report["dist_distributed"], expected, rtol=1e-5)
    split = batch["split"]
    per_replica = (split * weighted_dist(everything[:split])
                   + (8 - split) * weighted_dist(everything[split:])) / 8
    assert abs(per_replica - expected) > 1e-2
