"""Benchmark: the cost of a kdtrain Distiller epoch and evaluate.

In one process, with interleaved repeats and medians (see timing.py), on a
WRN-16-1 teacher and student and Fashion-MNIST (digits where Fashion-MNIST is
absent):

- a plain `student.fit` epoch, a kdtrain `Distiller` epoch and a
  `keras.distillation.Distiller` epoch (same loss kind: KL at T=4 mixed 50/50
  with the label crossentropy);
- `evaluate` of the bare student and of both distillers;
- teacher inference over the training data.

Targets: kdtrain fit <= 1.0x keras.distillation's fit; kdtrain evaluate
<= 1.05x the plain student's evaluate.

    python benchmarks/bench_distiller.py              # about 10 minutes
    python benchmarks/bench_distiller.py --quick      # about 2 minutes
"""

import argparse

from timing import interleaved
from timing import print_report
from timing import ratio_rows

import keras
from keras import distillation as keras_distillation

import kdtrain
from kdtrain import data as kdata
from kdtrain import models


def load(samples, batch_size):
    for name in ("fashion_mnist", "digits"):
        try:
            return name, kdata.load(
                name,
                batch_size=batch_size,
                train_size=samples,
                test_size=samples // 2,
                validation_split=0.0,
                shuffle=False,
            )
        except FileNotFoundError:
            continue
    raise SystemExit("no dataset available")


def keras_distiller(teacher, student):
    """`keras.distillation.Distiller` with KL at T=4, mixed 50/50 with labels."""
    model = keras_distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras_distillation.LogitsDistillation(4.0),
        student_loss_weight=0.5,
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def arguments(doc, configure=None):
    """The benchmarks' shared command line; `--quick` means 512 samples."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="wrn-16-1")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="512 samples")
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    if args.quick:
        args.samples = 512
    return args


def builder(model, info):
    """A function building a fresh `model` for the dataset `info`."""
    def build(seed=None):
        if seed is not None:
            keras.utils.set_random_seed(seed)
        return models.build(model, num_classes=info.num_classes,
                            input_shape=info.input_shape)
    return build


def main():
    args = arguments(__doc__)
    dataset, loaded = load(args.samples, args.batch_size)
    info = loaded.info
    train, test = loaded.train.cache(), loaded.test.cache()
    build = builder(args.model, info)

    crossentropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = build(0)
    teacher.compile(optimizer="adam", loss=crossentropy, metrics=["accuracy"])
    teacher.fit(train, epochs=1, verbose=0)

    plain = build(1)
    plain.compile(optimizer="adam", loss=crossentropy, metrics=["accuracy"])

    ours = kdtrain.Distiller(build(1), teacher)
    ours.compile(optimizer="adam",
                 distillation_loss=kdtrain.losses.KLDivergence(4.0),
                 ground_truth_weight=0.5, metrics=["accuracy"])

    theirs = keras_distiller(teacher, build(1))

    cases = {
        "plain student fit": lambda: plain.fit(train, epochs=1, verbose=0),
        "kdtrain fit": lambda: ours.fit(train, epochs=1, verbose=0),
        "keras.distillation fit": lambda: theirs.fit(train, epochs=1, verbose=0),
        "teacher inference": lambda: teacher.predict(train, verbose=0),
        "plain student evaluate": lambda: plain.evaluate(test, verbose=0),
        "kdtrain evaluate": lambda: ours.evaluate(test, verbose=0),
        "keras.distillation evaluate": lambda: theirs.evaluate(test, verbose=0),
    }
    results = interleaved(cases, repeats=args.repeats)
    rows = ratio_rows(results, [
        ("kdtrain fit / keras.distillation fit", "kdtrain fit",
         "keras.distillation fit", 1.0),
        ("kdtrain fit / (plain fit + teacher inference)", "kdtrain fit",
         ["plain student fit", "teacher inference"], 1.05),
        ("kdtrain fit / plain student fit", "kdtrain fit",
         "plain student fit", None),
        ("kdtrain evaluate / plain evaluate", "kdtrain evaluate",
         "plain student evaluate", 1.05),
        ("keras.distillation evaluate / plain evaluate",
         "keras.distillation evaluate", "plain student evaluate", None),
    ])
    print_report(
        results, rows,
        f"{args.model} on {dataset}: {info.num_train} training and "
        f"{info.num_test} test images, batch {args.batch_size}, "
        f"{args.repeats} interleaved repeats (medians)",
    )


if __name__ == "__main__":
    main()
