"""Benchmark: what `kdtrain ban --deterministic` costs.

Op determinism is switched on for a whole process and cannot be switched
off, so each run is a fresh `kdtrain ban` process. Runs with and without
`--deterministic` alternate (the order flips every round, see timing.py's
reasoning), each in a new directory, and the report gives the medians of
the child process's CPU time (user + system, from `os.wait4`) and wall time,
and their ratios.

    python benchmarks/bench_deterministic.py                # about 8 minutes
    python benchmarks/bench_deterministic.py --repeats 3 --model wrn-10-1
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="wrn-16-1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--generations", type=int, default=2)
    return parser.parse_args()


def run(arguments, directory, deterministic):
    """One `kdtrain ban` process; returns (wall, CPU) seconds."""
    command = [
        sys.executable, "-m", "kdtrain", "ban", "--dataset", "digits",
        "--model", arguments.model, "--epochs", str(arguments.epochs),
        "--generations", str(arguments.generations), "--no-progress",
        "--no-tensorboard", "--directory", directory,
    ] + (["--deterministic"] if deterministic else [])
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kdtrain failed: {' '.join(command)}")
    return wall, usage.ru_utime + usage.ru_stime


def main():
    arguments = parse()
    samples = {False: ([], []), True: ([], [])}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(arguments.repeats):
            order = (False, True) if round_index % 2 == 0 else (True, False)
            for deterministic in order:
                directory = os.path.join(
                    root, f"{round_index}-{int(deterministic)}"
                )
                wall, cpu = run(arguments, directory, deterministic)
                samples[deterministic][0].append(wall)
                samples[deterministic][1].append(cpu)
                print(f"round {round_index + 1}: deterministic="
                      f"{deterministic} wall {wall:.1f} s, CPU {cpu:.1f} s",
                      flush=True)
    medians = {
        key: tuple(statistics.median(values) for values in pair)
        for key, pair in samples.items()
    }
    print(f"\nkdtrain ban --dataset digits --model {arguments.model} "
          f"--epochs {arguments.epochs} --generations {arguments.generations}"
          f", medians of {arguments.repeats}:")
    print("| run | wall s | CPU s |\n|---|---:|---:|")
    for key, label in ((False, "default"), (True, "--deterministic")):
        print(f"| {label} | {medians[key][0]:.1f} | {medians[key][1]:.1f} |")
    print(f"| ratio | {medians[True][0] / medians[False][0]:.3f} | "
          f"{medians[True][1] / medians[False][1]:.3f} |")


if __name__ == "__main__":
    main()
