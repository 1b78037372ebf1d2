"""Fault injection: named points where a test stops the process.

kdtrain's crash tests kill a run at exact moments (inside a backup write,
between saving a model and recording it...) and check what the rerun makes
of the files left behind. The moment is chosen with an environment variable,
never with a sleep:

    KDTRAIN_FAULT="gen-2/backup.write"       SIGKILL the first time there
    KDTRAIN_FAULT="gen-0/train.step@5"       SIGKILL the 5th time
    KDTRAIN_FAULT="gen-2/backup.write:enospc"  raise OSError(ENOSPC) there,
                                             as a full disk would

Without the variable a fault point costs one dictionary lookup. The points
(`K` is a generation, or `ensemble` for the student distilled from the
ensemble, whose points are a generation's: `gen-ensemble/train.step`...):

    gen-K/train.step       after a training step of generation K
    gen-K/backup.write     a new epoch backup fully written, not yet renamed
    gen-K/backup.written   the new backup in place, older ones not yet removed
    gen-K/cache.compute    teacher outputs half computed
    gen-K/cache.write      the cache's files written, not yet renamed
    gen-K/model.save       model.keras written to its temporary name
    gen-K/model.saved      model.keras in place, its record not yet written
    gen-K/record.written   the record written, backup and cache not yet removed
    gen-K/model.load       before a finished generation is loaded on a rerun
    evaluate.model         before evaluating a model for the table
    evaluate.ensemble      before evaluating an ensemble for the table
    results.write          results.json written, not yet renamed
    study/results.write    a study's results.json written, not yet renamed
    sweep/results.write    a sweep's results.json written, not yet renamed
"""

import errno
import os
import signal

ENVIRONMENT_VARIABLE = "KDTRAIN_FAULT"
_ACTIONS = ("kill", "enospc")
_counts = {}
_plans = {}


def _parse(spec):
    """`"name@count:action"` as `(name, count, action)`, checked once."""
    if spec not in _plans:
        point, _, action = spec.partition(":")
        name, _, count = point.partition("@")
        action = action or "kill"
        if action not in _ACTIONS or not name or not (
            count == "" or count.isdigit() and int(count) >= 1
        ):
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}={spec!r} is not POINT[@COUNT][:ACTION]"
                f" with a count >= 1 and an action of {', '.join(_ACTIONS)}."
            )
        _plans[spec] = (name, int(count or 1), action)
    return _plans[spec]


def fault_point(name):
    """Stops the process here if `KDTRAIN_FAULT` names this point.

    Args:
        name: The point's name, e.g. `"gen-2/backup.write"`.

    Raises:
        OSError: `ENOSPC`, when the variable asks for a full disk here.
    """
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec:
        return
    wanted, count, action = _parse(spec)
    if name != wanted:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != count:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (at {name})")
    os.kill(os.getpid(), signal.SIGKILL)


def enabled():
    """Whether a fault point is armed in this process."""
    return bool(os.environ.get(ENVIRONMENT_VARIABLE))
