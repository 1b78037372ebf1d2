"""Package attributes imported on first use.

kdtrain's packages export their public names lazily, so that what needs no
TensorFlow (the command line's parsing, a finished run's files) never
imports it.
"""

import importlib
import sys


def attributes(package, names):
    """`__getattr__` and `__dir__` for a package exporting `names` lazily.

    Args:
        package: The package's `__name__`.
        names: Dict of attribute name to the module (absolute, or relative
            to `package` with a leading dot) it comes from; None for a
            submodule of that name, which is the attribute itself.

    Returns:
        `(__getattr__, __dir__)`, to assign in the package's `__init__`.

    Example:

    >>> __getattr__, __dir__ = attributes(__name__, {"Runner": ".runner"})
    """
    def __getattr__(name):
        if name in names:
            if names[name] is None:
                return importlib.import_module(f"{package}.{name}")
            module = importlib.import_module(names[name], package)
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
