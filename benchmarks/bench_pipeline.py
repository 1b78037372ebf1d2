"""Benchmark: does the kdtrain.data pipeline keep up with training?

Measures, with interleaved repeats and medians, the images/second that
the augmented training pipeline delivers (iterating the dataset only)
against the images/second a model trains at (`train_on_batch` on the same
batches, already in memory), for:

1. Fashion-MNIST (28x28x1, preset "mnist") vs WRN-16-1;
2. a generated folder of 96x96 PNGs (preset "skin_cancer") vs WRN-16-2.

Wall time and `time.process_time()` CPU time (all threads of the
process) are both reported. Target: pipeline/training ratio >= 5.

Usage:

    python benchmarks/bench_pipeline.py            # a few minutes, 2 cores
    python benchmarks/bench_pipeline.py --quick    # under a minute or so
"""

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time


import numpy as np


import keras

from kdtrain import data
from kdtrain import models


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    count = fn()
    return count, time.perf_counter() - wall, time.process_time() - cpu


def iterate(ds):
    def run():
        n = 0
        for x, _ in ds:
            n += int(x.shape[0])
        return n

    return run


def make_folder(root, n_per_class, size=96, seed=0):
    """Writes two classes of smooth random 128x128 PNGs (resized on load)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("benign", "malignant"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            small = rng.integers(0, 256, (8, 8, 3), dtype="uint8")
            img = Image.fromarray(small).resize((128, 128), Image.BILINEAR)
            img.save(root / c / f"{i:05d}.png")


def bench(label, loaded, model, loss, train_steps, repeats):
    model.compile(optimizer="adam", loss=loss)
    batches = []
    for x, y in loaded.train:
        batches.append((x, y))
        if len(batches) == train_steps:
            break
    # Warm-up, timed once: the first epoch also decodes and fills caches.
    first = timed(iterate(loaded.train))
    model.train_on_batch(*batches[0])  # warm-up: traces the train step

    def train():
        n = 0
        for x, y in batches:
            model.train_on_batch(x, y)
            n += int(x.shape[0])
        return n

    pipe, fit = [], []
    for _ in range(repeats):  # interleaved
        pipe.append(timed(iterate(loaded.train)))
        fit.append(timed(train))

    def summary(runs):
        n = runs[0][0]
        wall = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        return {
            "images": n,
            "wall_s": wall,
            "cpu_s": cpu,
            "images_per_s": n / wall,
            "cpu_ms_per_image": 1000 * cpu / n,
        }

    result = {
        "case": label,
        "first_epoch_images_per_s": first[0] / first[1],
        "pipeline": summary(pipe),
        "training": summary(fit),
    }
    result["ratio"] = (
        result["pipeline"]["images_per_s"] / result["training"]["images_per_s"]
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least 5)")
    keras.utils.set_random_seed(0)
    bs = args.batch_size
    sizes = dict(
        fmnist_train=2048 if args.quick else 8192,
        fmnist_steps=4 if args.quick else 10,
        folder_per_class=128 if args.quick else 512,
        folder_steps=2 if args.quick else 4,
    )
    results = []

    fashion = data.load(
        "fashion_mnist",
        train_size=sizes["fmnist_train"],
        validation_size=bs,
        test_size=bs,
        batch_size=bs,
        augment="mnist",
    )
    wrn = models.build("wrn-16-1", num_classes=10, input_shape=(28, 28, 1))
    results.append(
        bench(
            f"Fashion-MNIST 28x28 'mnist' aug, {fashion.info.num_train} imgs"
            " vs WRN-16-1",
            fashion,
            wrn,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            sizes["fmnist_steps"],
            args.repeats,
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "folder"
        make_folder(root, sizes["folder_per_class"])
        folder = data.load(
            "image_folder",
            directory=root,
            image_size=(96, 96),
            batch_size=bs,
            augment="skin_cancer",
        )
        wrn = models.build("wrn-16-2", num_classes=1, input_shape=(96, 96, 3))
        results.append(
            bench(
                f"Image folder 96x96 'skin_cancer' aug, {folder.info.num_train}"
                " imgs vs WRN-16-2",
                folder,
                wrn,
                keras.losses.BinaryCrossentropy(from_logits=True),
                sizes["folder_steps"],
                args.repeats,
            )
        )

    print(
        f"\nbatch_size={bs}, repeats={args.repeats} (medians), "
        f"cores={os.cpu_count()}, quick={args.quick}\n"
    )
    print(
        "| case | 1st epoch img/s | pipeline img/s | pipeline CPU ms/img "
        "| training img/s | training CPU ms/img | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p, t = r["pipeline"], r["training"]
        print(
            f"| {r['case']} | {r['first_epoch_images_per_s']:.0f} | "
            f"{p['images_per_s']:.0f} | "
            f"{p['cpu_ms_per_image']:.3f} | {t['images_per_s']:.0f} | "
            f"{t['cpu_ms_per_image']:.2f} | {r['ratio']:.1f} |"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
