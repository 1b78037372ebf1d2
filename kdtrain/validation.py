"""One checker per kind of value, used once where a value enters kdtrain.

Each checker returns the value normalized (an `int`, a `float`...) or
raises a `ValueError` naming the argument and the value received, in the
spirit of Keras' `keras/src/utils/argument_validation.py`. Code past the
boundary receives resolved values and checks nothing again.
"""

import math
import numbers

import keras


def integer(name, value, minimum=None, allow_none=False):
    """`value` as an `int`; bools and non-integral numbers are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
        minimum is not None and value < minimum
    ):
        bound = "" if minimum is None else f" >= {minimum}"
        none = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` must be an integer{bound}{none}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def number(name, value, minimum=None, maximum=None, exclusive_minimum=False,
           allow_none=False):
    """`value` as a finite `float` within the bounds given."""
    if value is None and allow_none:
        return None
    valid = (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value)
    )
    if valid and minimum is not None:
        valid = value > minimum if exclusive_minimum else value >= minimum
    if valid and maximum is not None:
        valid = value <= maximum
    if not valid:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        where = f" {' and '.join(bounds)}" if bounds else ""
        raise ValueError(
            f"`{name}` must be a finite number{where}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def choice(name, value, choices):
    """`value` if it is one of `choices` (compared by identity for bools)."""
    for option in choices:
        if value is option or (
            not isinstance(value, bool) and not isinstance(option, bool)
            and value == option
        ):
            return option
    raise ValueError(
        f"`{name}` must be one of {', '.join(map(repr, choices))}. "
        f"Received: {name}={value!r}"
    )


def model_builder(name, value, required=True):
    """A function returning fresh models (not a model object)."""
    if value is None and not required:
        return None
    if not callable(value) or isinstance(value, keras.Model):
        raise ValueError(
            f"`{name}` must be a function returning a fresh, uncompiled "
            "keras.Model (a model object would be shared by every "
            f"generation). Received: {name}={value!r}"
        )
    return value


def trained_model(name, value, allow_none=True):
    """A built `keras.Model` (its weights are what it teaches)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, keras.Model):
        raise ValueError(
            f"`{name}` must be a trained keras.Model"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )
    if not value.built:
        raise ValueError(
            f"The {name} {value.name!r} is not built, so it has no trained "
            "weights. Train it (or load a trained model) first."
        )
    return value
