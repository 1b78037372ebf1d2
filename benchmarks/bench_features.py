"""Benchmark: the cost of attention transfer over logit-only distillation.

One process, interleaved repeats, medians (see timing.py): a WRN-16-1
teacher and student on Fashion-MNIST (digits where it is absent), one epoch
of logit-only distillation (KL, T=4) against one epoch of the same plus
attention transfer at the three group outputs. Target: <= 1.15.

    python benchmarks/bench_features.py            # about 5 minutes on 2 cores
    python benchmarks/bench_features.py --quick    # 512 samples
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_distiller import arguments  # noqa: E402
from bench_distiller import builder  # noqa: E402
from bench_distiller import load  # noqa: E402

import kdtrain  # noqa: E402
from kdtrain import losses  # noqa: E402
from timing import interleaved  # noqa: E402
from timing import print_report  # noqa: E402
from timing import ratio_rows  # noqa: E402

GROUPS = ["group_1", "group_2", "group_3"]


def main():
    args = arguments(__doc__)
    dataset, loaded = load(args.samples, args.batch_size)
    info = loaded.info
    train = loaded.train.cache()
    build = builder(args.model, info)

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
