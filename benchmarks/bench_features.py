"""Benchmark: the cost of attention transfer over logit-only distillation.

One process, interleaved repeats, medians (see timing.py): a WRN-16-1
teacher and student on Fashion-MNIST (digits where it is absent), one epoch
of logit-only distillation (KL, T=4) against one epoch of the same plus
attention transfer at the three group outputs. Target: <= 1.15.

    python benchmarks/bench_features.py            # about 5 minutes on 2 cores
    python benchmarks/bench_features.py --quick    # 512 samples
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import keras  # noqa: E402
from bench_distiller import load  # noqa: E402

import kdtrain  # noqa: E402
from kdtrain import losses  # noqa: E402
from kdtrain import models  # noqa: E402
from timing import interleaved  # noqa: E402
from timing import print_report  # noqa: E402
from timing import ratio_rows  # noqa: E402

GROUPS = ["group_1", "group_2", "group_3"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-16-1")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="512 samples")
    args = parser.parse_args()
    if args.quick:
        args.samples = 512
    dataset, loaded = load(args.samples, args.batch_size)
    info = loaded.info
    train = loaded.train.cache()

    def build(seed):
        keras.utils.set_random_seed(seed)
        return models.build(args.model, num_classes=info.num_classes,
                            input_shape=info.input_shape)

    teacher = build(0)

    def distiller(feature_losses):
        model = kdtrain.Distiller(build(1), teacher)
        model.compile(optimizer="adam",
                      distillation_loss=kdtrain.losses.KLDivergence(4.0),
                      feature_losses=feature_losses)
        return model

    logits_only = distiller([])
    attention = distiller([losses.AttentionTransfer(GROUPS, weight=1000.0)])
    results = interleaved({
        "logit distillation": lambda: logits_only.fit(train, epochs=1, verbose=0),
        "logits + attention transfer (3 points)":
            lambda: attention.fit(train, epochs=1, verbose=0),
    }, repeats=args.repeats)
    rows = ratio_rows(results, [(
        "attention transfer / logit-only epoch",
        "logits + attention transfer (3 points)", "logit distillation", 1.15,
    )])
    print_report(
        results, rows,
        f"{args.model} on {dataset}: {info.num_train} training images, batch "
        f"{args.batch_size}, {args.repeats} interleaved repeats (medians)",
    )


if __name__ == "__main__":
    main()
