"""Distillation losses compared honestly: one teacher, a student per loss,
several seeds, paired intervals.

Per seed, a WRN-16-4 teacher is trained on a Fashion-MNIST subset; then a
WRN-16-1 student learns from it with each loss (soft targets, KL·T², KL·T²
on standardized logits, DKD, DIST, NKD, each with its paper's defaults and
the labels at weight 0.5), and a Born-Again pair of WRN-16-1 students
(both taught by the teacher) ends with a student distilled from their
ensemble. The teacher's outputs are computed once per seed and shared by
every student (`kdtrain.cache`). All students of a seed start from the same
weights and see the same batches: their differences are the losses'.

The table gives each model's test accuracy over the seeds (mean ± sd, 95%
interval) and its paired difference against the soft-targets student of
the same seed. Every chain is resumable: run the command again after a
crash and only what was missing is trained.

    python experiments/compare_losses.py                 # the README's table
    python experiments/compare_losses.py --dataset digits --train-size 300 \\
        --epochs 2 --seeds 0,1 --teacher-model wrn-10-2 --directory /tmp/cmp
"""

import argparse
import os
import time

import keras

import kdtrain
from kdtrain import data
from kdtrain import files
from kdtrain import losses
from kdtrain import models
from kdtrain import study

# name: (the table's label, the loss)
CONTENDERS = {
    "soft_targets": ("Soft targets (T=1)",
                     lambda: losses.get("soft_targets")),
    "kl": ("KL·T² (T=4)", lambda: losses.get("kl")),
    "kl_standardized": ("KL·T² (T=4), standardized logits",
                        lambda: losses.get("kl", standardize=True)),
    "dkd": ("DKD (α=1, β=8, T=4)", lambda: losses.get("dkd")),
    "dist": ("DIST (β=γ=1, τ=1)", lambda: losses.get("dist")),
    "nkd": ("NKD (γ=1.5, T=1)", lambda: losses.get("nkd")),
}
BASELINE = "soft_targets"


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--teacher-model", default="wrn-16-4")
    parser.add_argument("--model", default="wrn-16-1")
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--validation-split", type=float, default=0.05)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ground-truth-weight", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--directory", default="runs/compare-losses")
    return parser.parse_args()


def builder(name, info):
    return lambda: models.build(name, num_classes=info.output_units,
                                input_shape=info.input_shape)


def test_accuracy(model, test):
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    return float(model.evaluate(test, verbose=0, return_dict=True)[
        "accuracy"])


def run_seed(args, seed, directory):
    """The table of one seed: a row per model."""
    loaded = data.load(args.dataset, batch_size=args.batch_size, seed=seed,
                       validation_split=args.validation_split,
                       train_size=args.train_size, test_size=args.test_size)
    build = builder(args.model, loaded.info)
    common = dict(ground_truth_weight=args.ground_truth_weight, seed=seed,
                  verbose=2, progress=False, tensorboard=False)
    fit = dict(validation_data=loaded.validation, epochs=args.epochs,
               evaluate=False)

    def chain(name, **kwargs):
        runner = kdtrain.GenerationRunner(
            build, directory=os.path.join(directory, name),
            **{**common, **kwargs})
        return runner.run(loaded.train, **fit)

    # The first chain trains the teacher; the others learn from it.
    first = chain(BASELINE, generations=1,
                  build_teacher=builder(args.teacher_model, loaded.info),
                  distillation_loss=CONTENDERS[BASELINE][1]())
    teacher = first.models[0]
    rows = [("teacher", f"Teacher ({args.teacher_model})", teacher),
            (BASELINE, CONTENDERS[BASELINE][0], first.models[1])]
    for name, (label, loss) in CONTENDERS.items():
        if name != BASELINE:
            result = chain(name, generations=1, teacher=teacher,
                           distillation_loss=loss())
            rows.append((name, label, result.models[1]))
    pair = chain("ensemble", generations=2, teacher=teacher,
                 teach_from="teacher", distill_ensemble=True,
                 distillation_loss=CONTENDERS[BASELINE][1]())
    rows.append(("ensemble_of_two", "Ensemble of 2 students (2 models)",
                 pair.ensemble))
    rows.append(("distilled_ensemble", "Student of that ensemble",
                 pair.distilled_ensemble))
    return [{"name": name, "label": label, "split": "test",
             "accuracy": test_accuracy(model, loaded.test)}
            for name, label, model in rows]


def main():
    args = parse()
    seeds = study.check_seeds([int(s) for s in args.seeds.split(",")])
    started = time.perf_counter()
    tables = {seed: run_seed(args, seed, os.path.join(args.directory,
                                                      f"seed-{seed}"))
              for seed in seeds}
    summary = study.summarize(tables, baseline=BASELINE)
    minutes = (time.perf_counter() - started) / 60
    text = (f"{args.dataset}, {args.train_size} training images, "
            f"{args.epochs} epochs, seeds {args.seeds}: test accuracy; "
            f"mean ± sd, 95% t intervals; Δ paired against the "
            f"soft-targets student of the same seed. {minutes:.0f} min.\n\n"
            + study.markdown_summary(summary, baseline="soft targets")
            + "\n\n" + study.conclusion(
                summary, baseline="the soft-targets student"))
    files.write_json_atomically(os.path.join(args.directory, "results.json"),
                                {"seeds": list(seeds), "tables": tables,
                                 "summary": summary, "minutes": minutes,
                                 "arguments": vars(args)})
    files.write_text_atomically(os.path.join(args.directory, "report.md"),
                                text + "\n")
    print(text)


if __name__ == "__main__":
    main()
