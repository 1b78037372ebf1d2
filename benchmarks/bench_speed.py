"""Benchmark: what the teacher-output cache, the Distiller and XLA cost.

One process, interleaved repeats, medians (see timing.py), on a WRN-16-1
teacher and student and Fashion-MNIST (digits where it is absent):

- cached distillation epoch / plain `student.fit` epoch (target <= 1.05);
- online distillation epoch / (plain epoch + teacher inference over the
  same data) (target <= 1.05);
- kdtrain online / `keras.distillation.Distiller` (target <= 1.0);
- kdtrain `evaluate` / plain student `evaluate` (target <= 1.05);
- XLA (`jit_compile=True`) against the default, for the plain student and
  the online distiller;
- a 3-generation chain with and without the cache: wall time and peak
  memory (each in a fresh process, run once).

    python benchmarks/bench_speed.py            # about 10 minutes on 2 cores
    python benchmarks/bench_speed.py --quick    # 512 samples
"""

import json
import os
import resource
import subprocess
import sys
import time

from timing import interleaved
from timing import print_report
from timing import ratio_rows

import keras
import tensorflow as tf
from bench_distiller import arguments
from bench_distiller import builder
from bench_distiller import keras_distiller
from bench_distiller import load

import kdtrain
from kdtrain.cache import TeacherOutputCache
from kdtrain.cache import materialize

CROSSENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def distiller(build, teacher, **compile_kwargs):
    model = kdtrain.Distiller(build(1), teacher)
    model.compile(optimizer="adam",
                  distillation_loss=kdtrain.losses.KLDivergence(4.0),
                  ground_truth_weight=0.5, metrics=["accuracy"],
                  **compile_kwargs)
    return model


def plain(build, **compile_kwargs):
    model = build(1)
    model.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"],
                  **compile_kwargs)
    return model


def chain(args, cached):
    """One 3-generation chain in this process: prints wall time and peak RSS."""
    name, loaded = load(args.samples, args.batch_size)
    runner = kdtrain.GenerationRunner(
        builder(args.model, loaded.info), generations=3, seed=0, verbose=0,
        cache_teacher=cached, progress=False, tensorboard=False,
    )
    start = time.perf_counter()
    runner.run(loaded.train, epochs=1, evaluate=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": time.perf_counter() - start, "peak_mb": peak}))


def chains(args):
    rows = {}
    for cached in (True, False):
        output = subprocess.run(
            [sys.executable, __file__, "--chain", str(cached),
             "--samples", str(args.samples), "--model", args.model,
             "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        ).stdout
        rows[cached] = json.loads(output.strip().splitlines()[-1])
    print("\n| 3-generation chain (1 epoch each) | wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for cached, label in ((True, "with the cache"), (False, "online teacher")):
        print(f"| {label} | {rows[cached]['wall']:.1f} | "
              f"{rows[cached]['peak_mb']:.0f} |")


def main():
    args = arguments(__doc__, lambda parser: parser.add_argument(
        "--chain", choices=("True", "False"),
        help="(internal) run one chain in this process"))
    if args.chain:
        return chain(args, args.chain == "True")
    dataset, loaded = load(args.samples, args.batch_size)
    info = loaded.info
    x, y, _, _ = materialize(loaded.train)
    test = loaded.test.cache()
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(
        args.batch_size).prefetch(tf.data.AUTOTUNE)
    build = builder(args.model, info)
    teacher = build(0)
    teacher.compile(optimizer="adam", loss=CROSSENTROPY)
    teacher.fit(train, epochs=1, verbose=0)
    cache = TeacherOutputCache.compute(teacher, x)
    cached_train = cache.dataset(x, y, batch_size=args.batch_size)

    student, student_xla = plain(build), plain(build, jit_compile=True)
    online, online_xla = distiller(build, teacher), distiller(
        build, teacher, jit_compile=True)
    cached = distiller(build, teacher)
    theirs = keras_distiller(teacher, build(1))
    cases = {
        "plain student fit": lambda: student.fit(train, verbose=0),
        "plain student fit, XLA": lambda: student_xla.fit(train, verbose=0),
        "cached distillation fit": lambda: cached.fit(cached_train, verbose=0),
        "online distillation fit": lambda: online.fit(train, verbose=0),
        "online distillation fit, XLA": lambda: online_xla.fit(
            train, verbose=0),
        "keras.distillation fit": lambda: theirs.fit(train, verbose=0),
        "teacher inference": lambda: teacher.predict(
            x, batch_size=args.batch_size, verbose=0),
        "plain student evaluate": lambda: student.evaluate(test, verbose=0),
        "kdtrain evaluate": lambda: online.evaluate(test, verbose=0),
    }
    results = interleaved(cases, repeats=args.repeats)
    rows = ratio_rows(results, [
        ("cached distillation / plain student fit",
         "cached distillation fit", "plain student fit", 1.05),
        ("online distillation / (plain fit + teacher inference)",
         "online distillation fit",
         ["plain student fit", "teacher inference"], 1.05),
        ("kdtrain online / keras.distillation", "online distillation fit",
         "keras.distillation fit", 1.0),
        ("kdtrain evaluate / plain evaluate", "kdtrain evaluate",
         "plain student evaluate", 1.05),
        ("XLA / default: plain student fit", "plain student fit, XLA",
         "plain student fit", None),
        ("XLA / default: online distillation fit",
         "online distillation fit, XLA", "online distillation fit", None),
    ])
    print_report(
        results, rows,
        f"{args.model} on {dataset}: {len(x)} training and "
        f"{info.num_test} test images, batch {args.batch_size}, "
        f"{args.repeats} interleaved repeats (medians), "
        f"{os.cpu_count()} CPU cores",
    )
    chains(args)
    return None


if __name__ == "__main__":
    main()
