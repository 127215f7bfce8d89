"""What every figure shares: the parameters, the teacher, the labeled datasets, the students.

Every dataset is made by the real `pipeline label` code (stages/label.py) and every student is a
demo student file (data/students/*.toml) with its length and logging settings overridden, so the
figures measure the pipeline users run, not a re-implementation of it. Datasets are labeled once
per teacher and reused across runs (`pipeline label` skips a finished dataset with the same plan).
"""

import tomllib
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

from pipeline.config.toml import dumps_toml
from pipeline.models.checkpoint import load_model_dir
from pipeline.models.loaded import LoadedModel
from pipeline.softlabels.layout import TOKENIZER
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.stream import StreamConfig, StreamReader
from pipeline.training.students import StudentSpec, load_student, resolve_for_dataset
from pipeline.training.trainer import StudentRun
from stages.label import LabelConfig
from stages.label import run as label

REPO = Path(__file__).resolve().parents[1]
CORPUS = "builtin:bbc-news"
DEMO_TEACHER = REPO / "data/teacher"
TEACHER_TOKENIZER = REPO / "outputs/teacher-build/tokenizer.json"  # made by `make teacher`
TEACHER_SHAPE = {"vocab_size": 4096, "n_layer": 2, "n_head": 2, "d_model": 128, "context": 128}
DEMO_STUDENT = REPO / "data/students/gpt-tiny.toml"  # "one demo student" of figures 3, 4, 8


@dataclass
class Params:
    """Every size a figure uses; recorded verbatim in BENCHMARKS.md and results.json."""

    reps: int = 3
    seq_len: int = 128
    batch_size: int = 16  # teacher batch when labeling, and every student's batch
    top_k: int = 32
    shard_rows: int = 128
    row_group_rows: int = 64
    validation_fraction: float = 0.05  # the demo teacher's own: validation docs are held out
    label_docs: int = 200  # fig 1 (label vs bare loop), fig 4 (one epoch), fig 7 (dask)
    base_docs: int = 500  # figs 2, 3, 5, 8: the bigger labeled dataset
    storage_rows: int = 32  # fig 2: rows per repetition (a different slice each)
    storage_ks: tuple = (8, 32, 128)
    stream_student_steps: int = 8  # fig 3: steps timed for the student's consumption rate
    stream_epochs: int = 3  # fig 3: epochs read in one go, as training reads them
    students_steps: int = 25  # fig 5: steps of each of the 3 students
    memory_docs: int = 60  # fig 6: the 1x corpus (8x = 8 * memory_docs)
    quality_steps: int = 100  # fig 8: steps per student and seed
    quality_eval_rows: int = 48  # fig 8: validation rows scored against the live teacher
    students: tuple = ("gpt-tiny", "gpt-tiny-renorm", "gru-small")  # fig 5 (data/students)
    wide_vocab: int = 151_936  # fig 9: Qwen2's logits width
    vocab_docs: int = 24  # fig 9: articles of both train datasets (≥ vocab_steps batches)
    vocab_steps: int = 3  # fig 9: optimizer steps per measured `train`
    vocab_label_docs: int = 8  # fig 9: articles per measured `label` at the wide vocabulary
    wide_label_docs: int = 24  # fig 1 (wide): articles labeled at 151,936 logits
    startup_shards: int = 100_000  # fig 10: the big dataset (the small one has 10 shards)
    startup_docs: int = 60  # fig 10: articles labeled for its 16-row source shards
    chat_docs: int = 400  # fig 11: bbc-headlines conversations (the example job's 400)
    chat_seq_len: int = 128  # fig 11: a headline conversation is ~60-120 demo tokens
    chat_shard_rows: int = 32  # fig 11: small shards, so the bytes figure has disjoint slices
    chat_words: int | None = None  # fig 11 quick: turns cut to N words (None: as the corpus is)
    incremental_docs: int = 1_000  # fig 12: version 1's articles (+10 % make version 2)
    xtok_steps: int = 250  # fig 13: steps of each own-tokenizer student (the demo's)

    @classmethod
    def quick(cls) -> "Params":
        """Smoke-run sizes: every figure, every code path, seconds each."""
        return cls(seq_len=32, batch_size=4, shard_rows=32, row_group_rows=8,
                   validation_fraction=0.3, label_docs=3, base_docs=10, storage_rows=4,
                   stream_student_steps=2, stream_epochs=2, students_steps=2, memory_docs=1,
                   quality_steps=2, quality_eval_rows=4, wide_vocab=32_768, vocab_docs=2,
                   vocab_steps=2, vocab_label_docs=1, wide_label_docs=2, startup_shards=1_000,
                   startup_docs=20, chat_docs=24, chat_seq_len=64,
                   chat_shard_rows=2, chat_words=3, incremental_docs=20, xtok_steps=2)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Context:
    params: Params
    work: Path
    device: torch.device
    quick: bool = False
    teacher_arg: str | None = None
    notes: dict = field(default_factory=dict)

    @cached_property
    def teacher_path(self) -> Path:
        return teacher_dir(self.teacher_arg, self.work)[0]

    @cached_property
    def teacher_description(self) -> str:
        return teacher_dir(self.teacher_arg, self.work)[1]

    @cached_property
    def teacher(self) -> LoadedModel:
        return load_model_dir(self.teacher_path, self.device)

    def label_config(self, out: Path, docs: int, **overrides) -> LabelConfig:
        p = self.params
        cfg = LabelConfig(corpus=CORPUS, out=str(out), teacher=str(self.teacher_path),
                          top_k=p.top_k, seq_len=p.seq_len, batch_size=p.batch_size,
                          shard_rows=p.shard_rows, row_group_rows=p.row_group_rows,
                          validation_fraction=p.validation_fraction, limit_docs=docs,
                          device=str(self.device), overwrite=True, quiet=True)
        return replace(cfg, **overrides)

    def dataset(self, name: str, docs: int, **overrides) -> SoftLabelDataset:
        """A labeled dataset under work/data/NAME (labeled once; same plan → skipped)."""
        out = self.work / "data" / name
        label(self.label_config(out, docs, **overrides))
        return SoftLabelDataset(out)

    def student_file(self, name: str, template: Path = DEMO_STUDENT, **sections) -> Path:
        """A copy of a demo student file with some keys replaced, e.g. train={"max_steps": 5}.

        Evaluation and checkpoints are pushed past the end (the trainer still writes one at
        the start and the end), so the figures time training, not bookkeeping.
        """
        raw = tomllib.loads(template.read_text())
        raw["name"] = name
        raw.setdefault("train", {}).update(eval_every=10**6, checkpoint_every=10**6,
                                           log_every=10**6, eval_batches=1)
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        path = self.work / "students" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps_toml(raw))
        return path

    def student_spec(self, path: Path, ds: SoftLabelDataset, steps: int) -> StudentSpec:
        spec = resolve_for_dataset(load_student(path), ds.vocab_size, ds.seq_len)
        return replace(spec, train=replace(spec.train, max_steps=steps, epochs=None))

    def student_run(self, spec: StudentSpec, ds: SoftLabelDataset, steps: int) -> StudentRun:
        """A fresh StudentRun (same seed → same initial weights every time); writes nothing."""
        return StudentRun(spec, self.work / "runs" / spec.name, self.device,
                          ds.root / TOKENIZER, steps)

    def batches(self, ds: SoftLabelDataset, split: str = "train", limit: int | None = None,
                labels: bool = True) -> list[dict]:
        """Decoded batches of one epoch in the reader's order, on the device (untimed input)."""
        reader = StreamReader(ds, StreamConfig(split, self.params.batch_size), verify=False)
        out = []
        for pos, batch in reader.iter_epoch(0):
            if limit is not None and pos >= limit:
                break
            keep = batch if labels else {"input_ids": batch["input_ids"]}
            out.append({k: v.to(self.device) for k, v in keep.items()})
        return out


def teacher_dir(arg: str | None, work: Path) -> tuple[Path, str]:
    """The bundled demo teacher when it is there, else a random-init GPT of the same shape."""
    if arg:
        path = Path(arg)
        if not (path / "model.safetensors").is_file():
            raise SystemExit(f"--teacher {arg}: no model.safetensors there")
        return path, f"`{arg}`"
    if (DEMO_TEACHER / "model.safetensors").is_file():
        return DEMO_TEACHER, "demo teacher `data/teacher/` (GPT 2x128, vocab 4096, trained)"
    out = work / "random-teacher"
    if not (out / "model.safetensors").is_file():
        _random_teacher(out, work)
    return out, ("random-init teacher of the demo shape (GPT 2x128, vocab 4096; data/teacher/ "
                 "missing): speed figures hold, quality figures are meaningless")


def _random_teacher(out: Path, work: Path) -> None:
    from pipeline.models import build_model
    from pipeline.models.checkpoint import save_model_dir

    tokenizer = TEACHER_TOKENIZER
    if not tokenizer.is_file():  # a fresh clone without `make teacher`: train one like it
        from pipeline.labeling.corpus import CorpusSpec, read_texts
        from pipeline.models.tokenizer import train_bpe_tokenizer

        tokenizer = work / "tokenizer.json"
        train_bpe_tokenizer(read_texts(CorpusSpec(CORPUS)), TEACHER_SHAPE["vocab_size"],
                            tokenizer)
    torch.manual_seed(0)
    save_model_dir(build_model("gpt", dict(TEACHER_SHAPE)), tokenizer, out)
