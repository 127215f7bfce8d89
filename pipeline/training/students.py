"""Student files: one TOML per student, validated up front with errors that name the bad key.

A student file says what to build (`[model]`), how to optimise it (`[optimizer]`, `[schedule]`),
how long and how to batch (`[train]`) and what to learn from (`[loss]`). The vocabulary size
comes from the dataset, so one student file works with any dataset; a file may pin
`[model] vocab_size` or a top-level `tokenizer` path, and then a dataset that differs is refused.
Every run folder gets the *resolved* file (all defaults filled in) as `config.toml`.
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipeline.config.check import STUDENT, check_table, schema_of
from pipeline.config.fields import NAME, Range, at_least, base_types, opt
from pipeline.config.toml import read_toml
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES
from pipeline.training.losses import KINDS, LossSpec


@dataclass
class OptimizerSpec:
    lr: float = opt(3e-3, help="AdamW learning rate", check=Range(0, lo_open=True))
    weight_decay: float = opt(0.01, help="AdamW weight decay", check=Range(0))
    betas: list = opt(help="AdamW betas: two numbers in [0, 1)", factory=lambda: [0.9, 0.95])
    eps: float = opt(1e-8, help="AdamW eps", check=Range(0, lo_open=True))
    grad_clip: float = opt(1.0, help="max global grad norm; 0 turns clipping off",
                           check=Range(0))


@dataclass
class ScheduleSpec:
    warmup_steps: int = opt(20, help="linear warmup steps", check=at_least(0))
    min_lr: float | None = opt(None, help="end of the cosine; default lr / 10", check=Range(0))


POSITIVE = Range(0, lo_open=True)


@dataclass
class TrainSpec:
    batch_size: int = opt(16, help="rows per step", check=POSITIVE)
    max_steps: int | None = opt(None, help="stop after N steps", check=at_least(1))
    epochs: int | None = opt(None, help="passes over the train split (neither set: 1 epoch)",
                             check=at_least(1))
    seed: int = opt(0, help="init/dropout seed", check=at_least(0))
    eval_every: int = opt(100, help="validation loss every N steps", check=POSITIVE)
    eval_batches: int = opt(8, help="validation batches per evaluation", check=at_least(0))
    checkpoint_every: int = opt(100, help="checkpoint every N steps", check=POSITIVE)
    log_every: int = opt(1, help="metrics.jsonl line every N steps", check=POSITIVE)


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
        if self.loss.kind != "crosstok":  # run folders from before the key resolve unchanged
            del d["loss"]["uld_weight"]
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


def _section(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table like [{where.split('[')[-1]}")
    schema = schema_of(cls)
    check_table(raw, schema, where, STUDENT)
    return cls(**{**asdict(cls()), **{k: _as_declared(v, schema[k][0]) for k, v in raw.items()}})


def _as_declared(value, tp):
    """An int given for a float key is stored as a float (as TOML would write it back)."""
    return float(value) if float in base_types(tp) and isinstance(value, int) else value


def _model(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [model] must be a table")
    family = raw.get("family", "gpt")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(f"{where}: [model] family {family!r} is not a model family; valid are "
                          f"{sorted(FAMILIES)}")
    schema = schema_of(FAMILIES[family][0])
    params = {k: v for k, v in raw.items() if k != "family"}
    unknown = [k for k in params if k not in schema]
    if unknown:
        raise ConfigError(f"{where}: unknown [model] key {unknown[0]!r} for family {family}; "
                          f"valid keys are {['family', *schema]}")
    check_table(params, schema, f"{where} [model]", STUDENT)
    model = {"family": family, **{k: _as_declared(v, schema[k][0]) for k, v in params.items()}}
    shape = {**{k: f.default for k, (_, f) in schema.items()}, **model}
    if family == "gpt" and shape["d_model"] % shape["n_head"]:
        raise ConfigError(f"{where}: [model] d_model {shape['d_model']} must be divisible by "
                          f"n_head {shape['n_head']}; change one of them")
    return model


def _validate(spec: StudentSpec, where: str) -> None:
    """What one key's rule cannot say: the loss name, and betas as a pair."""
    o, loss = spec.optimizer, spec.loss
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                    and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"{where}: [optimizer] betas must be two numbers in [0, 1), got "
                          f"{o.betas}")
    if loss.kind not in KINDS:
        raise ConfigError(f"{where}: [loss] kind {loss.kind!r} is not a loss; valid are "
                          f"{list(KINDS)}")


def parse_student(raw: dict, path: str | Path) -> StudentSpec:
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid top-level keys are "
                          f"{TOP_KEYS}")
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str) or NAME.problem(name):
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


def load_student(path: str | Path) -> StudentSpec:
    path = Path(path)
    return parse_student(read_toml(path, "student file", "data/students/*.toml"), path)


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
