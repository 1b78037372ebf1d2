"""Benchmark: the cost of attention transfer over logit-only distillation.

One process, interleaved repeats, medians (see timing.py): a WRN-16-1
teacher and student on Fashion-MNIST (digits where it is absent), one epoch
of logit-only distillation (KL, T=4) against one epoch of the same plus
attention transfer at the three group outputs. Target: <= 1.15.

    python benchmarks/bench_features.py            # about 5 minutes on 2 cores
    python benchmarks/bench_features.py --quick    # 512 samples
"""


from timing import interleaved
from timing import print_report
from timing import ratio_rows

from bench_distiller import arguments
from bench_distiller import builder
from bench_distiller import load

import kdtrain
from kdtrain import losses

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
