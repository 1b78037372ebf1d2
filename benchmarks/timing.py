"""Interleaved, repeated timing: ratios that survive a shared, noisy machine.

Every case runs once per round, in an order that rotates from round to round,
so slow periods of the machine hit all cases alike; the figures are medians
over the rounds. CPU time (`time.process_time()`, all threads of the process)
is reported beside wall time: its ratios repeat far better on shared hosts.

Run the benchmarks as scripts (`python benchmarks/bench_speed.py`) with
kdtrain installed (`pip install -e .`): the script's folder is on the path,
so they import this module and each other directly.
"""

import os
import statistics
import time

# Imported before TensorFlow by every benchmark: its start-up noise off.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(function):
    """Runs `function()`; returns (wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(cases, repeats=5, warmup=1):
    """Times each case `repeats` times, interleaved, after `warmup` rounds.

    Args:
        cases: Dict of name to a zero-argument callable.
        repeats: Measured rounds (medians need at least 5).
        warmup: Unmeasured rounds (tracing, caches).

    Returns:
        Dict of name to `{"wall": median, "cpu": median, "walls": [...],
        "cpus": [...]}`.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples = {name: ([], []) for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = measure(cases[name])
            samples[name][0].append(wall)
            samples[name][1].append(cpu)
    return {
        name: {
            "wall": statistics.median(walls),
            "cpu": statistics.median(cpus),
            "walls": walls,
            "cpus": cpus,
        }
        for name, (walls, cpus) in samples.items()
    }


def ratio_rows(results, ratios):
    """Rows of (label, wall ratio, CPU ratio, target) for printing.

    Args:
        results: The output of `interleaved`.
        ratios: List of (label, numerator names, denominator names, target);
            names are summed on each side.
    """
    rows = []
    for label, top, bottom, target in ratios:
        top = [top] if isinstance(top, str) else top
        bottom = [bottom] if isinstance(bottom, str) else bottom
        wall = sum(results[n]["wall"] for n in top) / sum(
            results[n]["wall"] for n in bottom
        )
        cpu = sum(results[n]["cpu"] for n in top) / sum(
            results[n]["cpu"] for n in bottom
        )
        rows.append((label, wall, cpu, target))
    return rows


def print_report(results, rows, title):
    print(f"\n{title}\n")
    print("| case | median wall s | median CPU s |")
    print("|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['wall']:.3f} | {r['cpu']:.3f} |")
    print("\n| ratio | wall | CPU | target |")
    print("|---|---:|---:|---|")
    for label, wall, cpu, target in rows:
        verdict = ""
        if target is not None:
            verdict = f"<= {target}" + (" met" if cpu <= target else " missed")
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {verdict} |")
