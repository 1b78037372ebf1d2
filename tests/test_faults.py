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
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import HANG_GUARD

HERE = pathlib.Path(__file__).resolve().parent
ARGS = ["ban", "--model", "tiny-mlp", "--generations", "3", "--epochs", "3",
        "--learning-rate", "0.01", "--deterministic", "--no-progress",
        "--no-tensorboard"]
# Randomness inside training too (dropout, DKPP's permutations), and an
# EarlyStopping whose state must survive the crash: with these settings it
# stops generation 3 after its second epoch, and gives generation 1 back its
# third epoch's weights after a worse fourth.
RANDOM_ARGS = [*ARGS, "--model", "tiny-mlp-dropout", "--loss", "dkpp",
               "--early-stopping-patience", "1", "--epochs", "4",
               "--learning-rate", "0.05"]
# The runner augments the images, each batch's draws from its seeds.
AUGMENT_ARGS = [*ARGS, "--augment", "mnist"]
# One more student, distilled from the ensemble of the generations.
ENSEMBLE_ARGS = [*ARGS, "--distill-ensemble"]

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


def run_chain(directory, fault=None, args=ARGS):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KDTRAIN_FAULT", None)
    if fault:
        env["KDTRAIN_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(HERE / "fault_script.py"), *args,
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


def scratch(directory):
    """Backups and caches left in a finished chain's generations."""
    return [p for p in directory.glob("gen-*/*") if p.name in ("backup",
                                                                "cache")]


def numbers(directory):
    """Every number a finished chain recorded: its table and histories."""
    results = json.loads((directory / "results.json").read_text())
    table = [{k: v for k, v in row.items() if k != "wall_time"}
             for row in results["table"]]
    histories = {name: record["history"]
                 for name, record in results["generations"].items()}
    return table, histories


def tear_newest_backup(directory):
    """Cuts the newest backup's weights short, as a torn write would."""
    newest = directory / "gen-2" / "backup" / "epoch-0002"
    weights = newest / "variables.npz"
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


# name -> fault, in a chain of RANDOM_ARGS
RANDOM_KILLS = {
    "mid-epoch, with dropout and DKPP": "gen-2/train.step@50",
    "teacher mid-epoch, with dropout": "gen-0/train.step@60",
    "after the backup of the best epoch": "gen-1/backup.written@3",
    "after early stopping stopped": "gen-3/backup.written@2",
}


# name -> fault, in a chain of AUGMENT_ARGS
AUGMENT_KILLS = {
    "augmented teacher mid-epoch": "gen-0/train.step@30",
    "augmented student mid-epoch": "gen-2/train.step@50",
}


# name -> fault, in a chain of ENSEMBLE_ARGS
ENSEMBLE_KILLS = {
    "distilled ensemble mid-epoch": "gen-ensemble/train.step@60",
    "distilled ensemble between model and record":
        "gen-ensemble/model.saved",
    "distilled ensemble before backup and cache cleanup":
        "gen-ensemble/record.written",
}


def kill_and_rerun(directory, fault, damage=None, args=ARGS):
    killed = run_chain(directory, fault, args)
    if damage is not None:
        damage(directory)
    before = finished_models(directory)
    rerun = run_chain(directory, args=args)
    outcome = {"killed": killed, "rerun": rerun, "before": before,
               "after": finished_models(directory),
               "temporaries": temporaries(directory),
               "scratch": scratch(directory), "directory": directory}
    if rerun.returncode == 0:
        outcome["numbers"] = numbers(directory)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    scenarios = {name: (fault, None) for name, fault in KILLS.items()}
    scenarios.update(DAMAGED)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        references = [
            pool.submit(run_chain, root / "reference"),
            pool.submit(run_chain, root / "reference-random", None,
                        RANDOM_ARGS),
            pool.submit(run_chain, root / "reference-augment", None,
                        AUGMENT_ARGS),
        ]
        jobs = {
            name: pool.submit(kill_and_rerun, root / f"run-{i}", *scenario)
            for i, (name, scenario) in enumerate(scenarios.items())
        }
        jobs.update({
            name: pool.submit(kill_and_rerun, root / f"random-{i}", fault,
                              None, RANDOM_ARGS)
            for i, (name, fault) in enumerate(RANDOM_KILLS.items())
        })
        jobs.update({
            name: pool.submit(kill_and_rerun, root / f"augment-{i}", fault,
                              None, AUGMENT_ARGS)
            for i, (name, fault) in enumerate(AUGMENT_KILLS.items())
        })
        results = {name: job.result() for name, job in jobs.items()}
        references = [job.result() for job in references]
    for reference in references:
        assert reference.returncode == 0, reference.stderr[-3000:]
    return {
        "plain": (table(references[0].stdout), numbers(root / "reference")),
        "random": (table(references[1].stdout),
                   numbers(root / "reference-random")),
        "augment": (table(references[2].stdout),
                    numbers(root / "reference-augment")),
    }, results


def resumed(outcomes, name):
    """A scenario's outcome, after the checks every rerun must pass."""
    references, results = outcomes
    kind = ("random" if name in RANDOM_KILLS
            else "augment" if name in AUGMENT_KILLS else "plain")
    return checked(results[name], *references[kind])


def checked(outcome, reference, reference_numbers):
    """`outcome` after the checks every rerun must pass against the
    uninterrupted run's printed table and recorded numbers."""
    rerun = outcome["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(reference) == 3 and table(rerun.stdout) == reference
    # Every recorded number, not only the printed digits, is the same.
    assert outcome["numbers"] == reference_numbers
    # No generation that had finished was trained or written again.
    assert outcome["after"].items() >= outcome["before"].items()
    assert outcome["temporaries"] == [] and outcome["scratch"] == []
    outcome["messages"] = " ".join(rerun.stderr.split())
    return outcome


@pytest.mark.parametrize("name", [*KILLS, *RANDOM_KILLS, *AUGMENT_KILLS])
def test_a_killed_chain_resumes_to_the_uninterrupted_table(outcomes, name):
    outcome = resumed(outcomes, name)
    killed = outcome["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


@pytest.fixture(scope="module")
def distilled_ensemble_outcomes(tmp_path_factory):
    """The `ENSEMBLE_KILLS` scenarios (apart from `outcomes`: selecting
    them with -k runs only these)."""
    root = tmp_path_factory.mktemp("faults-ensemble")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        reference = pool.submit(run_chain, root / "reference", None,
                                ENSEMBLE_ARGS)
        jobs = {
            name: pool.submit(kill_and_rerun, root / f"ensemble-{i}", fault,
                              None, ENSEMBLE_ARGS)
            for i, (name, fault) in enumerate(ENSEMBLE_KILLS.items())
        }
        results = {name: job.result() for name, job in jobs.items()}
        reference = reference.result()
    assert reference.returncode == 0, reference.stderr[-3000:]
    return (table(reference.stdout), numbers(root / "reference")), results


@pytest.mark.parametrize("name", ENSEMBLE_KILLS)
def test_a_killed_distilled_ensemble_resumes_to_the_uninterrupted_table(
    distilled_ensemble_outcomes, name
):
    (reference, reference_numbers), results = distilled_ensemble_outcomes
    assert reference[0].rstrip().endswith("| Ensemble-distilled |")
    assert "gen-ensemble" in reference_numbers[1]
    outcome = checked(results[name], reference, reference_numbers)
    killed = outcome["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Killed while the extra student trained or was saved: every generation
    # had finished, and the rerun trained none of them again.
    assert {p.parent.name for p in outcome["before"]} >= {
        "gen-0", "gen-1", "gen-2", "gen-3"
    }
    assert "Training BAN" not in outcome["rerun"].stdout


def _point(fault):
    """`"gen-2/backup.write@2:enospc"` -> `"backup.write"`."""
    return fault.split(":")[0].split("@")[0].split("/")[-1]


def test_every_fault_point_is_exercised():
    from kdtrain import faults

    documented = set(re.findall(r"^    (?:gen-K/)?([a-z]+\.[a-z]+) ",
                                faults.__doc__, re.MULTILINE))
    covered = {_point(fault) for fault in KILLS.values()}
    covered |= {_point(fault) for fault, _ in DAMAGED.values()}
    # model.load: test_run_directory kills a rerun of a finished chain there.
    assert documented - covered == {"model.load"}
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


@pytest.mark.parametrize("name", [n for n in DAMAGED if "disk" not in n])
def test_the_damaged_runs_were_killed_first(outcomes, name):
    killed = outcomes[1][name]["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


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


def test_the_random_chain_really_stops_early_and_restores(outcomes):
    """The early-stopping scenarios test what they say."""
    _, histories = outcomes[0]["random"][1]
    assert len(histories["gen-3"]["loss"]) == 2  # stopped after epoch 2
    losses = histories["gen-1"]["val_loss"]
    assert len(losses) == 4 and losses[3] > losses[2]  # best weights back

