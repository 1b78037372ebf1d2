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

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_check.py")


def check(mode):
    result = subprocess.run(
        [sys.executable, SCRIPT, mode], capture_output=True, text=True,
        timeout=280, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
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
