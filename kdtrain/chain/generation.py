"""`Generation`: one model of a chain, with what is known about it."""

import dataclasses

import keras

from kdtrain.chain.results import ENSEMBLE_NAMES
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


@dataclasses.dataclass
class EnsembleTeacher:
    """The ensemble of the student generations, teaching one more student.

    It teaches with the mean of its members' probabilities (a
    `kdtrain.Distiller` given the list of their models builds the
    `GenerationEnsemble`), the same ensemble as the table's `"ensemble"`
    column: the students, not the teacher (Furlanello et al. 2018).

    Attributes:
        members: The `Generation`s 1..N.
        model: Their `GenerationEnsemble`, once a `Distiller` has made it.
        output_kind: `"probabilities"`, what the ensemble emits.
    """

    members: list
    model: keras.Model = None
    output_kind: str = "probabilities"
    name = "ensemble"
    label = ENSEMBLE_NAMES["ensemble"]

    @property
    def models(self):
        """The members' models, in generation order."""
        return [member.model for member in self.members]

    @property
    def lineage(self):
        """How the student records its teacher: every member's lineage."""
        return {"name": self.name,
                "members": [member.lineage for member in self.members]}
