"""Crash tests: `kdtrain ban --deterministic` killed at named points.

Each scenario runs a 3-generation chain of a tiny model on digits
(`fault_script.py`) with `KDTRAIN_FAULT` naming the moment to die (a SIGKILL
from inside the process, or a full disk), runs the same command again, and
checks that the rerun finishes (exit 0), retrains no generation that had
finished, leaves no temporary file, and prints exactly the uninterrupted
run's table. The scenarios run two at a time.
"""

import concurrent.futures
import hashlib
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ARGS = ["ban", "--model", "tiny-mlp", "--generations", "3", "--epochs", "3",
        "--learning-rate", "0.01", "--deterministic", "--no-progress",
        "--no-tensorboard"]
HANG_GUARD = 900  # seconds; a run takes about ten

# name -> (fault, what the first run must end with)
KILLS = {
    "teacher training": "gen-0/train.step@20",
    "inside a backup write": "gen-1/backup.write@2",
    "after a backup, before pruning": "gen-3/backup.written@3",
    "teacher outputs half computed": "gen-2/cache.compute",
    "inside the cache write": "gen-3/cache.write",
    "an epoch trained from a saved cache": "gen-3/train.step@60",
    "inside a model save": "gen-2/model.save",
    "between model and record": "gen-1/model.saved",
    "before backup and cache cleanup": "gen-2/record.written",
    "evaluating a model": "evaluate.model@3",
    "evaluating an ensemble": "evaluate.ensemble@2",
    "inside the results write": "results.write",
}


def run_chain(directory, fault=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KDTRAIN_FAULT", None)
    if fault:
        env["KDTRAIN_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(HERE / "fault_script.py"), *ARGS,
         "--directory", str(directory)],
        capture_output=True, text=True, timeout=HANG_GUARD, env=env,
    )


def table(output):
    return [line for line in output.splitlines() if line.startswith("| ")]


def finished_models(directory):
    """`{path: (sha256, mtime)}` of the generations that had finished."""
    return {
        path: (hashlib.sha256(path.read_bytes()).hexdigest(),
               path.stat().st_mtime_ns)
        for path in directory.glob("gen-*/model.keras")
        if (path.parent / "record.json").exists()
    }


def temporaries(directory):
    return [p for p in directory.rglob("*") if ".tmp" in p.name]


def tear_newest_backup(directory):
    """Cuts the newest backup's weights short, as a torn write would."""
    newest = directory / "gen-2" / "backup" / "epoch-0002"
    weights = newest / "checkpoint.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])


def damage_every_backup(directory):
    for state in (directory / "gen-1" / "backup").glob("*/state.json"):
        state.write_text("{not json")


def permute_cache(directory, keep_checksum):
    """Shuffles the rows of gen-3's saved teacher outputs."""
    from kdtrain import files

    cache = directory / "gen-3" / "cache"
    path = cache / "teacher_outputs.npy"
    logits = np.load(path)
    order = np.random.default_rng(0).permutation(len(logits))
    np.save(path, logits[order])
    if keep_checksum:  # Only recomputing rows with the teacher can tell.
        info = files.read_json(cache / "teacher_outputs.json")
        info["sha256"]["teacher_outputs.npy"] = files.sha256_file(path)
        files.write_json_atomically(cache / "teacher_outputs.json", info)


# name -> (fault, damage done to the files before the rerun)
DAMAGED = {
    "full disk during a backup": ("gen-2/backup.write@2:enospc", None),
    "a torn newest backup": ("gen-2/backup.written@2", tear_newest_backup),
    "no usable backup": ("gen-1/backup.written@2", damage_every_backup),
    "a permuted cache": (
        "gen-3/train.step@5", lambda d: permute_cache(d, False)
    ),
    "a permuted cache with a matching checksum": (
        "gen-3/train.step@5", lambda d: permute_cache(d, True)
    ),
}


def kill_and_rerun(directory, fault, damage=None):
    killed = run_chain(directory, fault)
    if damage is not None:
        damage(directory)
    before = finished_models(directory)
    rerun = run_chain(directory)
    return {"killed": killed, "rerun": rerun, "before": before,
            "after": finished_models(directory),
            "temporaries": temporaries(directory),
            "directory": directory}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    scenarios = {name: (fault, None) for name, fault in KILLS.items()}
    scenarios.update(DAMAGED)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        reference = pool.submit(run_chain, root / "reference")
        jobs = {
            name: pool.submit(kill_and_rerun, root / f"run-{i}", *scenario)
            for i, (name, scenario) in enumerate(scenarios.items())
        }
        results = {name: job.result() for name, job in jobs.items()}
        reference = reference.result()
    assert reference.returncode == 0, reference.stderr[-3000:]
    return table(reference.stdout), results


def resumed(outcomes, name):
    """A scenario's outcome, after the checks every rerun must pass."""
    reference, results = outcomes
    outcome = results[name]
    rerun = outcome["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(reference) == 3 and table(rerun.stdout) == reference
    # No generation that had finished was trained or written again.
    assert outcome["after"].items() >= outcome["before"].items()
    assert outcome["temporaries"] == []
    outcome["messages"] = " ".join(rerun.stderr.split())
    return outcome


@pytest.mark.parametrize("name", list(KILLS))
def test_a_killed_chain_resumes_to_the_uninterrupted_table(outcomes, name):
    outcome = resumed(outcomes, name)
    killed = outcome["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def test_every_phase_has_a_kill_point():
    phases = {fault.split("/")[-1].split(".")[0].split("@")[0]
              for fault in KILLS.values()}
    assert {"train", "backup", "cache", "model", "record", "evaluate",
            "results"} <= phases
    assert len(KILLS) >= 8


def test_a_full_disk_during_a_backup_fails_cleanly_and_resumes(outcomes):
    outcome = resumed(outcomes, "full disk during a backup")
    failed = outcome["killed"]
    assert failed.returncode == 1, failed.stderr[-3000:]
    message = " ".join(failed.stderr.split())
    assert "No space left on device" in message
    assert "gen-2/backup/epoch-0002" in message
    assert "gen-2/backup/epoch-0001) is intact" in message
    assert "resume with: kdtrain ban" in message


def test_a_torn_backup_falls_back_to_the_one_before(outcomes):
    outcome = resumed(outcomes, "a torn newest backup")
    newest = outcome["directory"] / "gen-2" / "backup" / "epoch-0002"
    assert f"The backup {newest} of generation 2 (BAN-2) cannot be used" in (
        outcome["messages"]
    )
    assert "does not match its checksum); trying the one before it" in (
        outcome["messages"]
    )


def test_no_usable_backup_restarts_the_generation(outcomes):
    outcome = resumed(outcomes, "no usable backup")
    assert "No backup of generation 1 (BAN-1) could be used" in (
        outcome["messages"]
    )
    assert "it starts again from its first epoch" in outcome["messages"]


def test_a_permuted_cache_is_detected_and_recomputed(outcomes):
    """The fault that trained BAN-3 on other samples' teacher outputs."""
    outcome = resumed(outcomes, "a permuted cache")
    assert "teacher_outputs.npy does not match its checksum" in (
        outcome["messages"]
    )
    assert "Computing it again" in outcome["messages"]
    outcome = resumed(outcomes, "a permuted cache with a matching checksum")
    assert "does not hold this teacher's outputs" in outcome["messages"]
    assert "Computing it again" in outcome["messages"]
