"""Which samples each split takes: held-out, validation and capped splits."""

import numpy as np

# Seed of the held-out test split made for datasets without one ("digits",
# a plain image folder) and of `test_size` subsets: it does not follow
# `seed`, so runs with different seeds are evaluated on the same images.
TEST_SPLIT_SEED = 0


def subset_indices(n, size, seed):
    """Sorted indices of a deterministic random subset of `size` of `n`."""
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:size])


def _split_indices(n, fraction, seed):
    """Splits `range(n)` into (kept, held_out) sorted index arrays."""
    n_out = int(round(n * fraction))
    if fraction > 0 and n_out == 0 and n > 1:
        n_out = 1
    if n_out >= n:
        raise ValueError(
            f"Cannot hold out {fraction:.0%} of only {n} samples and keep "
            "any for training."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def plan_splits(common, sizes, test_split=None):
    """Which samples of which source each split takes.

    Args:
        common: The `CommonOptions` options (validation split, seeds, caps).
        sizes: Number of samples of each source: `"train"`, and
            `"validation"` / `"test"` where the dataset has them. A
            missing test source is carved out of train (`test_split`,
            `TEST_SPLIT_SEED`), then a missing validation source
            (`common.validation_split`, `common.seed`).
        test_split: Fraction for a missing test source.

    Returns:
        A dict `{split: (source, indices)}` with sorted index arrays,
        capped by `train_size` / `validation_size` / `test_size`.
    """
    pool = np.arange(sizes["train"])
    plan = {}
    if "test" in sizes:
        plan["test"] = ("test", np.arange(sizes["test"]))
    else:
        keep, held = _split_indices(len(pool), test_split, TEST_SPLIT_SEED)
        plan["test"] = ("train", pool[held])
        pool = pool[keep]
    if "validation" in sizes:
        plan["validation"] = ("validation", np.arange(sizes["validation"]))
    elif common.validation_split > 0:
        keep, held = _split_indices(
            len(pool), common.validation_split, common.seed
        )
        plan["validation"] = ("train", pool[held])
        pool = pool[keep]
    plan["train"] = ("train", pool)
    caps = {
        "train": (common.train_size, common.seed),
        "validation": (common.validation_size, common.seed + 1),
        "test": (common.test_size, TEST_SPLIT_SEED),
    }
    ordered = {}
    for split in ("train", "validation", "test"):
        if split in plan:
            source, idx = plan[split]
            size, seed = caps[split]
            ordered[split] = (source, idx[subset_indices(len(idx), size, seed)])
    return ordered


def split_counts(plan):
    counts = {split: len(idx) for split, (_, idx) in plan.items()}
    counts.setdefault("validation", 0)
    return counts


def unknown_counts(common, has_validation_source=False):
    """Counts for `describe()` when the number of samples is unknown."""
    no_validation = common.validation_split == 0 and not has_validation_source
    return {
        "train": None,
        "validation": 0 if no_validation else None,
        "test": None,
    }
