"""Training configs: dataclasses with typed `--set key=value` overrides, JSON files and field help.

Every trainer's config subclasses TrainConfig: the fields of the shared loop, then its own."""
import json
import os
import typing
from dataclasses import MISSING, asdict, dataclass, fields

from .schedules import SCHEDULES


@dataclass
class TrainConfig:
    """Fields of the shared loop (fastface/train/loop.py)."""
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64              # per process: the global batch is batch_size x world size
    max_steps: int = 0                # stop after this many steps (0 = all epochs)
    checkpoint_every: int = 200       # steps between checkpoints (last.pt; also at the end)
    amp: bool = True                  # mixed precision on CUDA (bf16 where supported, else fp16 + scaler)
    clip_grad_norm: float = 0.0       # clip each optimiser's gradient norm to this (0 = off)
    sync_bn: bool = False             # SyncBatchNorm across processes (CUDA, torchrun)
    eval_every: int = 0               # steps between evaluations (0 = off; trainers that have one)
    sample_every: int = 0             # steps between sample image grids (0 = off; trainers that have one)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _base_type(self._types()[f.name])
            if kind is str and isinstance(value, os.PathLike):
                setattr(self, f.name, os.fspath(value))
            elif kind is tuple and isinstance(value, list):
                setattr(self, f.name, tuple(value))
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif kind in (int, float, bool, str) and not _is(value, kind):
                raise TypeError(f"config field {f.name} must be {kind.__name__}, got {value!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("max_steps", "eval_every", "sample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be a positive int, got {self.checkpoint_every!r}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"clip_grad_norm must be >= 0 (0 = off), got {self.clip_grad_norm!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed!r}")

    @classmethod
    def _types(cls):
        return typing.get_type_hints(cls)

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]

    def to_dict(self):
        """The config as saved in checkpoints (JSON values: tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values, source="config"):
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {source} keys {unknown}; valid keys: {', '.join(cls.field_names())}")
        return cls(**values)

    @classmethod
    def from_file(cls, path, **overrides):
        """Config from a JSON file of field values, with overrides on top."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path) as fh:
            try:
                values = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {path!r} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path!r} must hold a JSON object of field values")
        return cls.from_dict({**values, **overrides}, source=f"config keys in {path}:")

    @classmethod
    def parse_overrides(cls, items):
        """["key=value", ...] -> {key: typed value}; unknown keys raise with the list of valid ones."""
        types, out = cls._types(), {}
        for item in items or ():
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"--set needs key=value, got {item!r}")
            if key not in types or key not in cls.field_names():
                raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(cls.field_names())}")
            out[key] = parse_value(key, text, types[key])
        return out

    @classmethod
    def help_text(cls):
        """One line per field: name, type, default and its comment in the source (for --help)."""
        comments = _field_comments(cls)
        lines = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            kind = _base_type(cls._types()[f.name]).__name__
            note = comments.get(f.name, "")
            lines.append(f"  {f.name} ({kind}, default {default!r}){'  ' + note if note else ''}")
        return "\n".join(lines)


def _is(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _base_type(tp):
    origin = typing.get_origin(tp)
    return origin if origin is not None else tp


def parse_value(key, text, tp):
    """Parse a --set value for a field of type tp (bool, int, float, str, tuple, dict)."""
    kind = _base_type(tp)
    text = text.strip()
    try:
        if kind is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind is tuple:
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(json.loads(v) if _is_number(v) else v.strip() for v in text.split(",") if v.strip())
        if kind is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"--set {key}={text!r}: expected a {kind.__name__} value") from None
    raise ValueError(f"--set {key}: fields of type {kind.__name__} cannot be set from the command line")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _field_comments(cls):
    """{field: the comment after it in the class source}, over the class and its bases."""
    import inspect
    out = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in src.splitlines():
            head, _, comment = line.partition("#")
            name = head.strip().split(":")[0].strip()
            if comment and name.isidentifier() and ":" in head:
                out[name] = comment.strip()
    return out


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


__all__ = ["TrainConfig", "parse_value", "check_choice", "SCHEDULES"]
