"""Student files: one TOML per student, validated up front with errors that name the bad key.

A student file says what to build (`[model]`), how to optimise it (`[optimizer]`, `[schedule]`),
how long and how to batch (`[train]`) and what to learn from (`[loss]`). The vocabulary size
comes from the dataset, so one student file works with any dataset; a file may pin
`[model] vocab_size` or a top-level `tokenizer` path, and then a dataset that differs is refused.
Every run folder gets the *resolved* file (all defaults filled in) as `config.toml`.
"""

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.models import FAMILIES
from pipeline.training.losses import KINDS, LossSpec


@dataclass
class OptimizerSpec:
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off


@dataclass
class ScheduleSpec:
    warmup_steps: int = 20
    min_lr: float | None = None  # end of the cosine; default lr / 10


@dataclass
class TrainSpec:
    batch_size: int = 16
    max_steps: int | None = None
    epochs: int | None = None  # neither set: 1 epoch
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    log_every: int = 1


@dataclass
class StudentSpec:
    name: str
    path: str
    model: dict
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    train: TrainSpec
    loss: LossSpec
    tokenizer: str | None = None

    def as_dict(self) -> dict:
        """The resolved student, in the same shape as the TOML file."""
        d = {"name": self.name, "model": dict(self.model), "optimizer": asdict(self.optimizer),
             "schedule": asdict(self.schedule), "train": asdict(self.train),
             "loss": asdict(self.loss)}
        if self.tokenizer:
            d["tokenizer"] = self.tokenizer
        return d

    @property
    def family(self) -> str:
        return self.model["family"]

    def model_params(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "family"}


SECTIONS = {"optimizer": OptimizerSpec, "schedule": ScheduleSpec, "train": TrainSpec,
            "loss": LossSpec}
TOP_KEYS = ["name", "tokenizer", "model", *SECTIONS]


def _check_type(value, default, key: str, where: str):
    """Accept what the default's type accepts (ints for floats too); name the key otherwise."""
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list),
          dict: lambda v: isinstance(v, dict)}  # [model] config of family "hf"
    kind = type(default) if default is not None else None
    if kind is None:  # optional fields: int unless the name says float
        kind = float if key == "min_lr" else int
    if not ok[kind](value):
        raise ConfigError(f"{where}: key {key!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _section(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table like [{where.split('[')[-1]}")
    defaults = cls()
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {valid}")
    values = {k: _check_type(v, getattr(defaults, k), k, where) for k, v in raw.items()}
    return cls(**{**asdict(defaults), **values})


def _model(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [model] must be a table")
    family = raw.get("family", "gpt")
    if family not in FAMILIES:
        raise ConfigError(f"{where}: [model] family {family!r} is not a model family; valid are "
                          f"{sorted(FAMILIES)}")
    cfg_cls = FAMILIES[family][0]
    types = {f.name: f.type for f in fields(cfg_cls)}
    valid = ["family", *types]
    model = {"family": family}
    for key, value in raw.items():
        if key == "family":
            continue
        if key not in types:
            raise ConfigError(f"{where}: unknown [model] key {key!r} for family {family}; valid "
                              f"keys are {valid}")
        model[key] = _check_type(value, types[key](), key, f"{where} [model]")
    return model


def _validate(spec: StudentSpec, where: str) -> None:
    t, o, s, loss = spec.train, spec.optimizer, spec.schedule, spec.loss
    positive = {"[train] batch_size": t.batch_size, "[train] eval_every": t.eval_every,
                "[train] checkpoint_every": t.checkpoint_every, "[train] log_every": t.log_every,
                "[optimizer] lr": o.lr}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}: {key} must be > 0, got {value}")
    for key, value in {"[train] max_steps": t.max_steps, "[train] epochs": t.epochs}.items():
        if value is not None and value < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {value}")
    if t.eval_batches < 0 or s.warmup_steps < 0 or o.weight_decay < 0 or o.grad_clip < 0:
        raise ConfigError(f"{where}: eval_batches, warmup_steps, weight_decay and grad_clip must "
                          "be >= 0")
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"{where}: [optimizer] betas must be two numbers in [0, 1), got "
                          f"{o.betas}")
    if loss.kind not in KINDS:
        raise ConfigError(f"{where}: [loss] kind {loss.kind!r} is not a loss; valid are "
                          f"{list(KINDS)}")
    if not 0.0 <= loss.alpha <= 1.0 or not (loss.temperature > 0 and math.isfinite(
            loss.temperature)):
        raise ConfigError(f"{where}: [loss] alpha must be in [0, 1] and temperature > 0 (got "
                          f"alpha={loss.alpha}, temperature={loss.temperature})")


def parse_student(raw: dict, path: str | Path) -> StudentSpec:
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid top-level keys are "
                          f"{TOP_KEYS}")
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: name {name!r} must be a non-empty folder name")
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise ConfigError(f"{where}: key 'tokenizer' must be a path string")
    spec = StudentSpec(
        name=name, path=where, model=_model(raw.get("model", {}), where),
        optimizer=_section(OptimizerSpec, raw.get("optimizer", {}), f"{where} [optimizer]"),
        schedule=_section(ScheduleSpec, raw.get("schedule", {}), f"{where} [schedule]"),
        train=_section(TrainSpec, raw.get("train", {}), f"{where} [train]"),
        loss=_section(LossSpec, raw.get("loss", {}), f"{where} [loss]"), tokenizer=tokenizer)
    _validate(spec, where)
    return spec


def read_config_toml(path: Path, what: str, see: str) -> dict:
    """A TOML config file (student, job) as a dict; missing or malformed: ConfigError, exit 2."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found (see {see})")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def load_student(path: str | Path) -> StudentSpec:
    path = Path(path)
    return parse_student(read_config_toml(path, "student file", "data/students/*.toml"), path)


def with_overrides(spec: StudentSpec, max_steps: int | None, epochs: int | None) -> StudentSpec:
    """Command-line --max-steps/--epochs replace the file's length settings (both of them)."""
    if max_steps is None and epochs is None:
        return spec
    for flag, v in (("--max-steps", max_steps), ("--epochs", epochs)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    train = TrainSpec(**{**asdict(spec.train), "max_steps": max_steps, "epochs": epochs})
    return StudentSpec(**{**spec.__dict__, "train": train})


def resolve_for_dataset(spec: StudentSpec, vocab_size: int, seq_len: int) -> StudentSpec:
    """Fill in what comes from the dataset (vocab size; GPT context = seq_len) and defaults."""
    model = dict(spec.model)
    pinned = model.get("vocab_size")
    if pinned is not None and pinned != vocab_size:
        raise ConfigError(f"{spec.path}: [model] vocab_size {pinned} != dataset vocab size "
                          f"{vocab_size}; drop the key (it comes from the dataset) or use a "
                          "dataset made with this student's tokenizer")
    model["vocab_size"] = vocab_size
    if spec.family == "hf":  # model_type, config keys and positions, checked by transformers
        from pipeline.models.hf import check_student_model

        check_student_model(model, seq_len, spec.path)
    if "context" in [f.name for f in fields(FAMILIES[spec.family][0])]:
        model.setdefault("context", seq_len)
        if model["context"] < seq_len:
            raise ConfigError(f"{spec.path}: [model] context {model['context']} < dataset "
                              f"seq_len {seq_len}; raise context to at least {seq_len}")
    schedule = spec.schedule
    if schedule.min_lr is None:
        schedule = ScheduleSpec(schedule.warmup_steps, spec.optimizer.lr / 10)
    train = spec.train
    if train.max_steps is None and train.epochs is None:
        train = TrainSpec(**{**asdict(train), "epochs": 1})
    return StudentSpec(**{**spec.__dict__, "model": model, "schedule": schedule, "train": train})


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. [model] config of family "hf"
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_key(k: str) -> str:
    bare = k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k)
    return k if bare else _toml_value(k)


def dumps_toml(d: dict) -> str:
    """A tiny TOML writer for flat tables (None values are left out: TOML has no null)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items()
             if not isinstance(v, dict) and v is not None]
    for section, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
