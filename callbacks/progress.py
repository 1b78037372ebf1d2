"""`TqdmProgress`: tqdm bars for generations, epochs and steps."""

import math
import sys

from .generation import GenerationCallback


def _format_logs(logs, keys=None):
    items = {}
    for name, value in (logs or {}).items():
        if keys is not None and name not in keys:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        items[name] = f"{value:.4g}" if math.isfinite(value) else str(value)
    return items


class TqdmProgress(GenerationCallback):
    """Progress bars with tqdm, in place of Keras' own progress output.

    Three nested bars: generations (when a `GenerationRunner` drives it),
    epochs and the steps of the current epoch, each showing the running
    loss and accuracy (`show` picks the logs shown). Pass `verbose=0` to
    `fit` so Keras does not print its own bar beside these.

    Args:
        show: Names of the logs shown beside the bars. Defaults to `loss`,
            `accuracy` and their validation versions. `None` shows all.
        steps: Whether to show a bar for the steps of each epoch.
        leave: Whether the epoch bar stays on screen once `fit` ends.
            Defaults to True for a plain `fit`, False inside a chain (where
            the generation bar stays).
        file: The stream written to. Defaults to `sys.stderr`.
        disable: Turns all the bars off.

    Example:

    ```python
    from kdtrain.callbacks import TqdmProgress

    model.fit(x, y, epochs=5, verbose=0, callbacks=[TqdmProgress()])
    ```
    """

    def __init__(
        self,
        show=("loss", "accuracy", "val_loss", "val_accuracy"),
        steps=True,
        leave=None,
        file=None,
        disable=False,
    ):
        super().__init__()
        self.show = None if show is None else tuple(show)
        self.steps = bool(steps)
        self.leave = leave
        self.file = file
        self.disable = bool(disable)
        self._generation_bar = None
        self._epoch_bar = None
        self._step_bar = None
        self._first_epoch = True
        self._description = None

    def _bar(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(
            file=self.file if self.file is not None else sys.stderr,
            disable=self.disable,
            dynamic_ncols=True,
            **kwargs,
        )

    # Chain events (from a GenerationRunner) -------------------------------

    def on_chain_begin(self, logs=None):
        logs = logs or {}
        self.begin_generations(logs.get("models", 0),
                               initial=logs.get("finished", 0))

    def on_generation_begin(self, generation, logs=None):
        self.set_generation((logs or {}).get("label", generation))

    def on_generation_end(self, generation, logs=None):
        self.end_generation(logs)

    def on_chain_end(self, logs=None):
        self.end_generations()

    # Generations ----------------------------------------------------------

    def begin_generations(self, total, initial=0):
        """Opens the generation bar.

        Args:
            total: The number of models the chain trains or loads.
            initial: How many are already done.
        """
        self.end_generations()
        self._generation_bar = self._bar(
            total=total, initial=initial, desc="generations", unit="gen",
            leave=True, position=0,
        )

    def set_generation(self, description):
        """Names the model the next `fit` trains, e.g. `"BAN-2"`."""
        self._description = str(description)
        if self._generation_bar is not None:
            self._generation_bar.set_description(self._description)

    def end_generation(self, logs=None):
        """Counts one generation as done and shows its final logs."""
        if self._generation_bar is not None:
            self._generation_bar.set_postfix(
                _format_logs(logs, self.show), refresh=False
            )
            self._generation_bar.update(1)

    def end_generations(self):
        """Closes the generation bar."""
        if self._generation_bar is not None:
            self._generation_bar.close()
            self._generation_bar = None

    # Keras hooks ----------------------------------------------------------

    def _nested(self):
        return self._generation_bar is not None

    def on_train_begin(self, logs=None):
        leave = self.leave if self.leave is not None else not self._nested()
        self._epoch_bar = self._bar(
            total=self.params.get("epochs"),
            desc=self._description or "epochs",
            unit="epoch",
            leave=leave,
            position=1 if self._nested() else 0,
        )
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch and epoch and self._epoch_bar is not None:
            # A run resumed by BackupAndRestore starts past epoch 0.
            self._epoch_bar.n = epoch
            self._epoch_bar.refresh()
        self._first_epoch = False
        if self.steps:
            self._step_bar = self._bar(
                total=self.params.get("steps"),
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
                position=2 if self._nested() else 1,
            )

    def on_train_batch_end(self, batch, logs=None):
        if self._step_bar is not None:
            self._step_bar.set_postfix(
                _format_logs(logs, self.show), refresh=False
            )
            self._step_bar.update(batch + 1 - self._step_bar.n)

    def on_epoch_end(self, epoch, logs=None):
        if self._step_bar is not None:
            self._step_bar.close()
            self._step_bar = None
        if self._epoch_bar is not None:
            self._epoch_bar.set_postfix(
                _format_logs(logs, self.show), refresh=False
            )
            self._epoch_bar.update(1)

    def on_train_end(self, logs=None):
        if self._step_bar is not None:
            self._step_bar.close()
            self._step_bar = None
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None
