"""The options of every verb, with their defaults, help, rules and job wiring: the one definition.

`pipeline label --help`, the [label]/[train]/[evaluate] keys of a job file and the checks run on
both are all read from these dataclasses (pipeline/config/fields.py says how), so adding a field
here adds the flag, the job key and its check at once. The stages import their config from here
(stages/label.py re-exports LabelConfig, and so on).
"""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.fields import DEVICE, NAME, PATH, Choice, Range, at_least, opt

# as in pipeline/softlabels/schema.py (which imports pyarrow; a test keeps them equal)
LOGPROB_ENCODINGS = ("fp16", "fp32", "u8")
ID_ENCODINGS = ("sorted_delta", "rank")
U8_DEFAULT_MIN_LOGPROB = -16.0
LABEL_MODES = ("topk", "topp", "sampled")
# as in pipeline/labeling/chat.py and rows.py (a test keeps them equal)
TRAIN_ON = ("all", "assistant", "last-turn")
PACK_MODES = ("concat", "none", "packed")
OVERLONG = ("truncate", "drop", "refuse")
DEFAULT_SEQ_LEN = 256
MAX_ENTRIES = 65535  # counts of top-p/sampled entries are stored as uint16
QUIET = "pipeline run --quiet"
DEVICE_HELP = "auto (CUDA if present), cpu, cuda, cuda:N."
TOPP, SAMPLED, U8 = ("mode", "topp"), ("mode", "sampled"), ("logprob_encoding", "u8")


def device(job: str | None = None):
    return opt("auto", help=DEVICE_HELP, check=DEVICE, job=job)


@dataclass(kw_only=True)  # any order: the help lists them as declared
class LabelConfig:
    corpus: str = opt(help="File, directory, glob of .parquet/.jsonl/.csv/.txt, or "
                      "builtin:bbc-news.", check=PATH, job="[corpus] source")
    out: str = opt(help="Dataset directory (or URI, e.g. s3://bucket/ds) to create or resume.",
                   check=PATH)
    teacher: str | None = opt(None, help="Teacher: model directory (config.json + "
                              "model.safetensors + tokenizer.json), a Hugging Face folder, "
                              "hf:NAME_OR_PATH, or a URI of a folder.", check=PATH,
                                job="[teacher] dir")
    tokenizer: str | None = opt(None, help="tokenizers JSON; with --top-k 0 and no teacher, "
                                "writes a tokenized dataset.", check=PATH, cli_type=Path)
    top_k: int = opt(32, help="Soft-label entries kept per position; 0 = tokens only.",
                     check=Range(lo=0, says="is negative: use 0 (tokens only) or k >= 1"))
    # None: DEFAULT_SEQ_LEN, or the teacher's context when that is shorter (stages/label.py)
    seq_len: int | None = opt(None, help="Tokens per packed row (at least 2: one next-token "
                              "target).", check=at_least(2), show_default=f"{DEFAULT_SEQ_LEN}, "
                              "or the teacher's context if shorter")
    batch_size: int = opt(16, help="Rows per teacher forward.", check=at_least(1))
    shard_rows: int = opt(512, help="Rows per Parquet shard.", check=at_least(1))
    row_group_rows: int = opt(128, help="Rows per Parquet row group.", check=at_least(1))
    validation_fraction: float = opt(0.02, help="Share of documents (by id hash) in the "
                                     "validation split.", check=Range(0, 1, hi_open=True))
    logprob_encoding: str = opt("fp16", help="fp16, fp32 or u8 log-probabilities (u8: linear on "
                                "[--u8-min-logprob, 0], docs/FORMAT.md).",
                                check=Choice(LOGPROB_ENCODINGS))
    device: str = device()
    overwrite: bool = opt(False, help="Replace a different dataset of ours in --out (removes "
                          "only files the labeler wrote).")
    limit_docs: int | None = opt(None, help="Read only the first N documents.",
                                 check=at_least(1), job="[corpus] limit_docs")
    text_column: str = opt("text", help="Text column of parquet/jsonl/csv files.",
                           job="[corpus] text_column")
    id_column: str | None = opt(None, help="Document id column (default: file:row).",
                                job="[corpus] id_column")
    # dataset versions (format 1.4, pipeline/labeling/incremental.py)
    incremental: bool = opt(False, help="Label only added/changed documents into a new "
                            "dataset version (needs stable ids: --id-column, --content-ids or "
                            ".txt files).")
    content_ids: bool = opt(False, help="Document ids derived from the text (a hash), for "
                            "corpora without an id column.", job="[corpus] content_ids")
    quiet: bool = opt(False, help="No progress bar.", job=QUIET)
    workers: int | None = opt(None, help="Label on a local dask cluster of N worker processes "
                              "(one shard per task; one GPU each if any).", check=at_least(1))
    scheduler: str | None = opt(None, help="Label on an existing dask cluster: tcp://HOST:PORT "
                                "or a scheduler file.")
    # label modes (format 1.1, pipeline/labeling/modes.py); every labeled dataset is format 1.2
    # by default; with id_encoding "rank", topk with fp16/fp32 writes 1.0 and the others 1.1
    mode: str = opt("topk", help="topk (k per position), topp (smallest set reaching --top-p) "
                    "or sampled (--samples draws, importance weights).", check=Choice(LABEL_MODES))
    top_p: float = opt(0.95, help="topp: mass each position's set must reach.",
                       check=Range(0, 1, lo_open=True), when=TOPP)
    min_k: int = opt(1, help="topp: fewest entries per position.", check=Range(1, MAX_ENTRIES),
                     when=TOPP)
    max_k: int = opt(64, help="topp: most entries per position.", check=Range(1, MAX_ENTRIES),
                     when=TOPP)
    samples: int = opt(64, help="sampled: draws N per position.", check=Range(1, MAX_ENTRIES),
                       when=SAMPLED)
    proposal_temperature: float = opt(1.0, help="sampled: draw from the teacher at this "
                                      "temperature (weights stay unbiased).",
                                      check=Range(0.01, 100), when=SAMPLED)
    seed: int = opt(0, help="sampled: seed of the draws (recorded; reproducible).",
                    check=at_least(0), when=SAMPLED)
    u8_min_logprob: float = opt(U8_DEFAULT_MIN_LOGPROB, help="u8: log-probability of the lowest "
                                "code.", check=Range(-1000, 0, hi_open=True), when=U8)
    id_encoding: str = opt("sorted_delta", help="sorted_delta: compact ids, format 1.2 "
                           "(default); rank: the 1.0/1.1 layout for older readers.",
                           check=Choice(ID_ENCODINGS))
    trust_remote_code: bool = opt(False, help="Let an hf: teacher run the Python code its repo "
                                  "ships.", flag=("--trust-remote-code",))
    # chat and packed data (format 1.3, pipeline/labeling/samples.py)
    messages_column: str | None = opt(None, help="Conversation corpus: column holding a list "
                                      "of {role, content} messages.",
                                      job="[corpus] messages_column")
    prompt_column: str | None = opt(None, help="Prompt/response corpus: the prompt column "
                                    "(with --response-column).", job="[corpus] prompt_column")
    response_column: str | None = opt(None, help="Prompt/response corpus: the response column.",
                                      job="[corpus] response_column")
    chat_template: str | None = opt(None, help="Jinja chat template file (default: the "
                                    "teacher tokenizer's chat_template).", check=PATH,
                                    cli_type=Path)
    train_on: str | None = opt(None, help="Positions trained on (and labeled): all, assistant "
                               "or last-turn.", check=Choice(TRAIN_ON),
                               show_default="assistant for conversations, all for text")
    pack: str | None = opt(None, help="Rows: concat (samples back to back, attention across "
                           "them), none (one sample a row, padded) or packed (several, each "
                           "attending only to itself).", check=Choice(PACK_MODES),
                           show_default="packed for conversations, concat for text")
    add_special_tokens: str = opt("auto", help="BOS/EOS of the tokenizer's post-processor: "
                                  "auto (text: as the tokenizer does; conversations: as the "
                                  "template writes), yes or no.",
                                  check=Choice(("auto", "yes", "no")))
    overlong: str = opt("truncate", help="A sample longer than --seq-len (pack none/packed): "
                        "truncate, drop or refuse (counted in the manifest).",
                        check=Choice(OVERLONG))


@dataclass(kw_only=True)
class TrainConfig:
    labels: str = opt(help="Soft-label (or tokens-only) dataset directory or URI.",
                      check=PATH, job="[label] out")
    students: list[str] = opt(help="Student TOML file; repeat for more students (all train "
                              "from one read pass).", flag=("--student",), cli_type=list[Path],
                              check=PATH, job="students")
    out: str = opt(help="Runs directory (or URI): one folder per student.", check=PATH)
    version: int | None = opt(None, help="Dataset version to train on (default: the latest; "
                              "`pipeline inspect DS --versions`).", check=at_least(1))
    continue_from: str | None = opt(None, help="Continue this finished run folder's weights "
                                    "(a new run: its own optimizer and schedule), or a runs "
                                    "folder holding one per student.", check=PATH,
                                    job="[train] continue")
    new_rows_only: bool = opt(False, help="With --continue-from: train only on shards added "
                              "since the version it was trained on.")
    max_steps: int | None = opt(None, help="Override every student's length: stop after N "
                                "optimizer steps.", check=at_least(1))
    epochs: int | None = opt(None, help="Override every student's length: E passes over the "
                             "train split.", check=at_least(1))
    device: str = device()
    resume: bool = opt(False, help="Continue unfinished run folders from their last checkpoint.",
                       job="always on in a job (a rerun resumes)")
    num_workers: int = opt(0, help="DataLoader worker processes reading shards.",
                           check=at_least(0))
    data_seed: int = opt(0, help="Seed of the shard/row shuffle (the read order).",
                         check=at_least(0))
    shuffle_rows: int = opt(512, help="Rows shuffled together (shuffle buffer).",
                            check=at_least(1))
    quiet: bool = opt(False, help="No progress bars.", job=QUIET)
    # one dask task per student on a LocalCluster of N processes, or an existing cluster
    workers: int | None = opt(None, help="Train on a local dask cluster of N worker processes: "
                              "one task per student.", check=at_least(1))
    scheduler: str | None = opt(None, help="Train on an existing dask cluster: tcp://HOST:PORT "
                                "or a scheduler file.")


@dataclass(kw_only=True)
class EvaluateConfig:
    labels: str = opt(help="Soft-label dataset (its validation split is used).",
                      check=PATH, job="[label] out")
    runs: list[str] = opt(help="Run folder / model directory / hf:NAME_OR_PATH / URI; repeat.",
                          flag=("--run",), check=PATH, job="students (their run folders)")
    teacher: str | None = opt(None, help="The labeling teacher: adds a teacher row and "
                              "speed/size ratios.", check=PATH, job="[teacher] dir")
    out: str = opt(help="Report directory (or URI) to write.", check=PATH)
    version: int | None = opt(None, help="Dataset version whose validation split is scored "
                              "(default: the latest).", check=at_least(1))
    device: str = device()
    max_rows: int | None = opt(None, help="Score at most N validation rows.", check=at_least(1))
    batch_size: int = opt(8, help="Rows per forward (also the timed batch).", check=at_least(1))
    bench_warmup: int = opt(3, help="Untimed forwards per model before the timed rounds.",
                            check=at_least(0))
    bench_repeats: int = opt(10, help="Timed forwards per model, in interleaved rounds (median "
                             "reported).", check=at_least(1))
    quiet: bool = opt(False, help="No progress bar.", job=QUIET)
    trust_remote_code: bool = opt(False, help="Let hf: models run the Python code their repos "
                                  "ship.", flag=("--trust-remote-code",))


@dataclass(kw_only=True)
class JobConfig:
    """[job] of a job file (pipeline/cli/jobs.py): what the whole job shares."""

    out: str = opt(help="labels/, runs/ and report/ go under it unless a section sets out.",
                   check=PATH)
    name: str | None = opt(None, help="The job's name (default: the file stem).", check=NAME)
    device: str = device()


@dataclass(kw_only=True)
class AuditConfig:
    labels: str = opt(help="Soft-label dataset directory or URI.", check=PATH)
    teacher: str = opt(help="The teacher that labeled it (sha256 checked).", check=PATH)
    rows: int = opt(64, help="Rows of the split to re-run the teacher on.", check=at_least(1))
    split: str = opt("validation", help="Split to read rows from.",
                     check=Choice(("train", "validation")))
    batch_size: int = opt(8, help="Rows per teacher forward.", check=at_least(1))
    device: str = device()


@dataclass(kw_only=True)
class TokenizerConfig:
    corpus: str = opt(help="Corpus to learn merges from (same forms as label).", check=PATH)
    # beyond 2**20 the BPE trainer's tables alone exhaust memory (and no tokenizer is that big)
    vocab_size: int = opt(8192, help="Vocabulary size including specials.",
                          check=Range(3, 2**20))
    out: str = opt(help="Where to write tokenizer.json.", check=PATH, cli_type=Path)
    text_column: str = opt("text", help="Text column of tabular corpora.")
    limit_docs: int | None = opt(None, help="Use only the first N documents.", check=at_least(1))


@dataclass(kw_only=True)
class BigramConfig:
    labels: str = opt(help="Dataset directory or URI (any label mode).", check=PATH)
    max_rows: int | None = opt(None, help="Fit on at most N train rows.", check=at_least(1))
