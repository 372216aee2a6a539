"""What every architecture config (the part of model.pt that rebuilds a model) shares."""
from dataclasses import asdict, fields


class ArchConfig:
    """Mixin for architecture dataclasses: from_dict keeps the fields it knows (a saved config may carry
    training fields too), to_dict gives the JSON-able values."""

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})

    def to_dict(self):
        return asdict(self)
