"""`python -m kdtrain`: the same as the `kdtrain` command."""

from kdtrain.cli import entry_point

entry_point()
