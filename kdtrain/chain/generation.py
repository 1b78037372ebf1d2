"""`Generation`: one model of a chain, with what is known about it."""

import dataclasses

import keras

from kdtrain.chain.results import model_label
from kdtrain.chain.results import model_name


@dataclasses.dataclass
class Generation:
    """One model of a chain: trained here, loaded from its directory, or given.

    Attributes:
        index: The generation, 0 for the teacher.
        model: The `keras.Model`.
        output_kind: `"logits"` or `"probabilities"`.
        record: What `gen-K/record.json` holds (SHA-256, teacher, history,
            evaluation...); empty for a teacher that was passed in.
        history: Its training's `keras.callbacks.History`, or None for a
            teacher that was passed in.
    """

    index: int
    model: keras.Model
    output_kind: str
    record: dict = dataclasses.field(default_factory=dict)
    history: object = None

    @property
    def name(self):
        """`"teacher"` or `"gen-K"`."""
        return model_name(self.index)

    @property
    def label(self):
        """`"Teacher"` or `"BAN-K"`."""
        return model_label(self.index)

    @property
    def lineage(self):
        """How a student records this generation as its teacher."""
        return {"generation": self.index, "name": self.name,
                "sha256": self.record.get("sha256")}

    @classmethod
    def from_record(cls, index, model, output_kind, record):
        """A finished generation loaded from its directory."""
        history = keras.callbacks.History()
        history.history = record.get("history", {})
        history.epoch = list(range(record.get("epochs", 0)))
        return cls(index, model, output_kind, record, history)
