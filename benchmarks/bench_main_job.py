"""Benchmark: the main job (`kdtrain ban`) against another version of kdtrain.

Each round runs, for the working tree and for a baseline commit (extracted
with `git archive`), in alternating order:

- the main job, `kdtrain ban` (digits, WRN-16-1, teacher + 3 generations,
  10 epochs each), in a fresh directory: the process's CPU time (all
  threads) and wall time, and each generation's first-step overhead, the
  CPU time of its first training step minus the median of its other steps
  (tracing, graph optimization);
- the same command again on the finished run (the table at once);
- two errors that need no training: `kdtrain evaluate` on a missing
  directory and `kdtrain ban --model` with an unknown name.

It prints the medians and the ratios working tree / baseline. Run it from
the repository with kdtrain installed (`pip install -e .`):

    python benchmarks/bench_main_job.py                  # about 15 minutes
    python benchmarks/bench_main_job.py --baseline HEAD~3 --repeats 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the measured process: imports kdtrain from ROOT (sys.argv[1]),
# times every fit's steps through a callback added to keras.Model.fit, runs
# the command line and writes the figures to sys.argv[2].
DRIVER = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
started = time.perf_counter()
steps = []

def timed_fit(original):
    import keras

    class StepTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            steps.append([])
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.process_time()
        def on_train_batch_end(self, batch, logs=None):
            steps[-1].append(time.process_time() - self.start)

    def fit(self, *args, callbacks=None, **kwargs):
        return original(self, *args,
                        callbacks=list(callbacks or []) + [StepTimes()],
                        **kwargs)
    return fit

if sys.argv[3] == "train":
    import keras
    keras.Model.fit = timed_fit(keras.Model.fit)
from kdtrain.cli import main
code = main(sys.argv[4:])
overheads = [s[0] - statistics.median(s[1:]) for s in steps if len(s) > 1]
with open(sys.argv[2], "w") as out:
    json.dump({"code": code, "cpu": time.process_time(),
               "wall": time.perf_counter() - started,
               "first_step": overheads}, out)
"""


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="fc8642c",
                        help="the commit to compare with (default: fc8642c)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def extract(commit, folder):
    """The files of `commit` in `folder` (git archive, no worktree)."""
    archive = subprocess.run(["git", "-C", REPOSITORY, "archive", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def measure(root, mode, argv, workdir):
    """Runs the driver once; returns its figures (whole-process CPU)."""
    out = os.path.join(workdir, "figures.json")
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", DRIVER, root, out, mode, *argv],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    wall = time.perf_counter() - started
    if not os.path.exists(out):
        raise SystemExit(f"{root} {argv} failed:\n{process.stderr[-3000:]}")
    with open(out) as handle:
        figures = json.load(handle)
    os.remove(out)
    figures["process_wall"] = wall
    return figures


def one_round(versions, order, workdir, samples):
    for name in order:
        root = versions[name]
        run_dir = tempfile.mkdtemp(dir=workdir)
        job = ["ban", "--directory", os.path.join(run_dir, "run")]
        cases = {
            "main job": ("train", job, 0),
            "finished run": ("table", job, 0),
            "missing directory": ("error", ["evaluate",
                                            os.path.join(run_dir, "none")], 2),
            "unknown model": ("error", ["ban", "--model", "no-such-model",
                                        "--directory",
                                        os.path.join(run_dir, "x")], 2),
        }
        for case, (mode, argv, expected) in cases.items():
            figures = measure(root, mode, argv, run_dir)
            if figures["code"] != expected:
                raise SystemExit(f"{name}: {case} exited {figures['code']}, "
                                 f"not {expected}")
            samples.setdefault((name, case), []).append(figures)


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    arguments = parse()
    workdir = tempfile.mkdtemp(prefix="kdtrain-bench-")
    versions = {
        "baseline": extract(arguments.baseline,
                            tempfile.mkdtemp(dir=workdir)),
        "current": REPOSITORY,
    }
    samples = {}
    for round_index in range(arguments.repeats):
        order = ["baseline", "current"]
        if round_index % 2:
            order.reverse()
        one_round(versions, order, workdir, samples)
        print(f"round {round_index + 1}/{arguments.repeats} done",
              flush=True)
    print(f"\nbaseline {arguments.baseline}, medians of {arguments.repeats}"
          " interleaved rounds (seconds)")
    print(f"{'case':<20}{'version':<10}{'CPU':>8}{'wall':>8}"
          f"{'first step (CPU, per generation)':>36}")
    rows = {}
    for (name, case), runs in sorted(samples.items(),
                                     key=lambda item: item[0][1]):
        cpu = median([r["cpu"] for r in runs])
        wall = median([r["process_wall"] for r in runs])
        first = median([statistics.mean(r["first_step"]) for r in runs
                        if r["first_step"]])
        rows[name, case] = (cpu, wall, first)
        first_text = f"{first:.2f}" if first == first else "-"
        print(f"{case:<20}{name:<10}{cpu:8.2f}{wall:8.2f}{first_text:>36}")
    print("\nratios current / baseline")
    for case in dict.fromkeys(case for _, case in rows):
        (cpu, wall, first) = rows["current", case]
        (cpu0, wall0, first0) = rows["baseline", case]
        line = f"{case:<20}CPU {cpu / cpu0:.3f}  wall {wall / wall0:.3f}"
        if first == first and first0 == first0:
            line += f"  first step {first / first0:.3f}"
        print(line)


if __name__ == "__main__":
    main()
