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
        kind = {None: "an integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        none = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` must be {kind}{none}. Received: {name}={value!r}"
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


def boolean(name, value):
    """`value` if it is True or False (not 0, 1, or a string)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


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


def ground_truth_weight(weight):
    """`ground_truth_weight` as a float in [0, 1]."""
    return number("ground_truth_weight", weight, 0.0, 1.0)


def distillation_pair(student, teacher):
    """Checks a student and its teacher: two distinct models sharing nothing.

    Raises:
        ValueError: Not models, the same object, an unbuilt teacher, or
            shared weights.
    """
    for argument, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`{argument}` must be a keras.Model. "
                f"Received: {argument}={model!r}"
            )
    if student is teacher:
        raise ValueError(
            "The student and the teacher are the same object: training the "
            "student would change its own teacher. Build a fresh student "
            f"(e.g. keras.models.clone_model). Received: model {student.name!r}"
            " as both."
        )
    if not teacher.built:
        raise ValueError(
            f"The teacher {teacher.name!r} is not built, so it has no trained "
            "weights. Train it (or load a trained model) before distilling."
        )
    teacher_variables = {id(v) for v in teacher.weights}
    shared = [v.path for v in student.weights if id(v) in teacher_variables]
    if shared:
        raise ValueError(
            "The student shares weights with the teacher, so training it "
            f"would change the teacher: {', '.join(shared[:5])}. Build the "
            "student from fresh layers."
        )


def same_output_shapes(teacher_shape, student_shape):
    """Raises unless two known output shapes are equal (None: unknown)."""
    if teacher_shape is None or student_shape is None:
        return
    teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
    if teacher_shape != student_shape:
        raise ValueError(
            "The teacher's and the student's outputs must have the same "
            f"shape. Received: teacher output shape={teacher_shape}, student "
            f"output shape={student_shape}"
        )
