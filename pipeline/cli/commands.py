"""The `pipeline` command line (typer). Each verb is a thin shell over a stage's `run`.

Every user-facing failure is a PipelineError: printed as one red line on stderr, exit code 1
(2 for a bad job/student file). Tracebacks are reserved for bugs.
"""

import errno
import json
import os
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import interrupt, progress
from pipeline.cli import datasets, sharing
from pipeline.cli.options import config_command, extra_option
from pipeline.cli.summary import (
    corpus_counts,
    dataset_lines,
    interrupted_line,
    say,
    train_lines,
)
from pipeline.config.stages import (
    AuditConfig,
    BigramConfig,
    EvaluateConfig,
    LabelConfig,
    TokenizerConfig,
    TrainConfig,
)
from pipeline.errors import PipelineError
from pipeline.io.uris import redact, redact_text, secrets_in

_TYPED_SECRETS: list[str] = []  # credentials inside the URIs of this command line: never echoed
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
VERSION_HELP = "Dataset version (default: the latest; see `pipeline inspect DS --versions`)."

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Offline teacher labeling for knowledge distillation: label a corpus once "
                       "into Parquet soft labels, then train and evaluate many students from it.")
tokenizer_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="Tokenizer utilities.")
app.add_typer(tokenizer_app, name="tokenizer")
out = Console()
err = Console(stderr=True)


@app.callback()
def _global_options(
    endpoint_url: str | None = typer.Option(
        None, "--endpoint-url", envvar="SOFTLABELS_ENDPOINT_URL",
        help="S3-compatible endpoint for s3:// paths (e.g. http://minio:9000); sets "
             "AWS_ENDPOINT_URL for this command. Credentials and region come from the usual AWS "
             "environment."),
    log_format: Literal["auto", "plain", "json"] = typer.Option(
        "auto", "--log-format", envvar=progress.FORMAT_ENV,
        help="Progress on stderr: auto (bars on a terminal, else a plain line every "
             f"${progress.INTERVAL_ENV} s, default 30), plain, or json (JSON lines)."),
    threads: int | None = typer.Option(
        None, "--threads", envvar="SOFTLABELS_THREADS", min=1,
        help="CPU compute threads per process (default 1, or OMP_NUM_THREADS if set). Fixed "
             "for the whole run, dynamic threading off: reruns and resumes are bit-exact when "
             "they use the same count (README: Threads)."),
) -> None:
    from pipeline.io.storage import set_endpoint_url
    from pipeline.threads import pin_threads

    pin_threads(threads)  # before any verb imports torch (pipeline/threads.py says why)
    set_endpoint_url(endpoint_url)
    progress.set_log_format(log_format)


@app.command()
@config_command(LabelConfig)
def label(cfg: LabelConfig) -> None:
    """Run the teacher over a corpus once and write a soft-label dataset (resumable)."""
    from stages.label import run

    manifest = run(cfg)
    for line in dataset_lines(manifest, cfg.out):
        say(out, line)


@app.command()
@config_command(TrainConfig)
def train(cfg: TrainConfig) -> None:
    """Train students from a dataset, all in one read pass; resumable, skips finished ones.

    Under `torchrun --nproc-per-node N -m pipeline train ...` each student trains across the N
    processes (DDP; rank 0 writes the run folder)."""
    from stages.train import run, summaries

    runs = run(cfg)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    for name, s in summaries(runs).items():
        for line in train_lines(name, s, _run_location(cfg.out, name)):
            say(out, line)


def _run_location(out_dir: str, name: str) -> str:
    """Where a run folder lives: in --out, even where it was trained in a staging copy."""
    from pipeline.io.storage import Store

    return str(Store(out_dir).locate(name))


@app.command()
def validate(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
             version: int | None = typer.Option(None, "--version", min=1, help=VERSION_HELP)
             ) -> None:
    """Check every shard: checksum, schema, counts, id range, log-prob and tail-mass sanity."""
    from pipeline.softlabels.validate import validate_dataset

    problems, summary = validate_dataset(dataset, version)
    for p in problems:
        err.print(f"[red]invalid:[/red] {escape(redact_text(p))}", highlight=False,
                  soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    out.print(f"valid: {summary['shards']} shards, {summary['rows']:,} rows")


@app.command()
def inspect(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
            version: int | None = typer.Option(None, "--version", min=1, help=VERSION_HELP),
            versions: bool = typer.Option(False, "--versions", help="Show the version history.")
            ) -> None:
    """Show a dataset's card: teacher, tokenizer, corpus, labels, splits and sizes."""
    from pipeline.softlabels.manifest import load_manifest

    if versions:
        return datasets.print_versions(dataset, as_json, out)
    m = load_manifest(dataset, version)
    if as_json:
        sys.stdout.write(json.dumps(m, indent=2, sort_keys=True) + "\n")
        return
    t = Table(title=f"soft-label dataset {redact(dataset)}", show_header=False)
    teacher = m.get("teacher") or {}
    rows = [("format", m["format_version"]), ("created", m["created_at"]),
            ("teacher", f"{redact(teacher.get('spec', 'none'))} "
                        f"({teacher.get('parameters', '-')} params)"),
            ("tokenizer", f"vocab {m['tokenizer']['vocab_size']}, "
                          f"sha256 {m['tokenizer']['sha256'][:12]}"),
            ("corpus", f"{redact(m['corpus']['uri'])} ({m['corpus']['documents_read']} docs)"),
            ("labels", ", ".join(f"{k}={v}" for k, v in m["labels"].items())),
            ("seq_len", str(m["seq_len"]))]
    for split, shards in m["splits"].items():
        rows.append((f"split {split}", f"{len(shards)} shards, "
                     f"{sum(s['rows'] for s in shards):,} rows"))
    rows += corpus_counts(m) + datasets.imported_rows(m)
    mass = m["summary"].get("mean_topk_mass")
    rows.append(("mean top-k mass", "-" if mass is None else f"{mass:.4f}"))
    rows.append(("bytes/position", f"{m['summary']['bytes_per_position']:.2f}"))
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


@app.command()
@config_command(AuditConfig, extra_option("as_json", bool, False, "--json",
                                          help="Print the report as JSON."))
def audit(cfg: AuditConfig, as_json: bool) -> None:
    """Re-run the teacher on N rows: full-vocabulary KL of the stored labels, coverage, bytes."""
    from stages.audit import run

    r = run(cfg)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n")
        return
    t = Table(title=f"label audit {cfg.labels} ({r['mode']}, {r['logprob_encoding']})",
              show_header=False)
    for key in ("positions", "kl_mean", "kl_max", "coverage", "entries_per_position",
                "tail_mass_max_error", "bytes_per_position"):
        v = r[key]
        t.add_row(key, f"{v:.6g}" if isinstance(v, float) else str(v))
    out.print(t)


@app.command()
@config_command(BigramConfig)
def bigram(cfg: BigramConfig) -> None:
    """Fit a count-based bigram LM on the train split; print its validation cross-entropy."""
    from pipeline.evaluation.bigram import bigram_cross_entropy, fit_bigram, split_rows_and_mask
    from pipeline.softlabels.reader import SoftLabelDataset

    ds = SoftLabelDataset(cfg.labels)
    rows, mask = split_rows_and_mask(ds, "train", cfg.max_rows)
    model = fit_bigram(rows, ds.vocab_size, mask=mask)
    rows, mask = split_rows_and_mask(ds, "validation")
    ce = bigram_cross_entropy(model, rows, mask)
    if ce != ce:  # NaN: a masked validation split with no trained position
        raise PipelineError(f"{cfg.labels}: the validation split has no trained position "
                            "(loss_mask false everywhere); relabel with a validation fraction")
    where = " on trained (loss_mask) positions" if mask is not None else ""
    out.print(f"bigram validation cross-entropy{where}: {ce:.4f} nats (perplexity "
              f"{2.718281828**ce:.1f})")


@app.command()
@config_command(EvaluateConfig)
def evaluate(cfg: EvaluateConfig) -> None:
    """Fidelity, quality, calibration, speed and size of students against their teacher."""
    from pipeline.evaluation.report import print_leaderboard
    from stages.evaluate import run

    print_leaderboard(run(cfg), cfg.out, out)


@app.command("run")
def run_job(
    job: Path = typer.Argument(..., help="Job TOML (see data/jobs/example.toml)."),
    dry_run: bool = typer.Option(False, help="Print the plan (what is complete, what would "
                                 "run) and exit."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Run a job file: label → train → evaluate, skipping stages that are already complete."""
    from pipeline.cli.run import RunConfig, run

    run(RunConfig(job=str(job), dry_run=dry_run, quiet=quiet), out)


datasets.register(app, out)  # `pipeline gc`
sharing.register(app, out, err)  # publish, ls, pull, export, import


@tokenizer_app.command("train")
@config_command(TokenizerConfig)
def tokenizer_train(cfg: TokenizerConfig) -> None:
    """Train a byte-level BPE tokenizer (tokenizers) and save it as one JSON file."""
    from pipeline.labeling.corpus import CorpusSpec, read_texts
    from pipeline.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(read_texts(CorpusSpec(cfg.corpus, cfg.text_column),
                                         cfg.limit_docs), cfg.vocab_size, Path(cfg.out))
    out.print(f"tokenizer {cfg.out}: vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}")


def _click_error(name: str) -> type:
    """click's exception class `name`, from whichever click typer uses (it may ship its own)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def main(argv: list[str] | None = None) -> None:
    """The console entry point; `argv` (default: sys.argv[1:]) lets tests run it in process.
    SIGINT/SIGTERM stop the command cleanly (pipeline/interrupt.py): one line, exit 75.

    Every failure a user can cause is one line on stderr: a PipelineError (exit 1, or 2 for a
    bad job/student file), a full disk (exit 1) and a malformed command line (a missing option,
    a value typer cannot parse: exit 2, as click exits)."""
    argv = sys.argv[1:] if argv is None else argv
    _TYPED_SECRETS[:] = [x for a in argv for x in secrets_in(a)]
    try:
        with interrupt.handling():
            code = app(args=argv, prog_name="pipeline", standalone_mode=False)
    except interrupt.Interrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks for all ranks
            err.print(escape(redact_text(interrupted_line(exc, argv, set(app_verbs())))),
                      highlight=False, soft_wrap=True)
        sys.exit(interrupt.EXIT_INTERRUPTED)
    except PipelineError as exc:
        _fail(str(exc), exc.exit_code)
    except _click_error("UsageError") as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `pipeline` alone: the help, as ever
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _fail(exc.format_message() + _typed(argv, exc) + where, exc.exit_code)
    except _click_error("ClickException") as exc:
        _fail(exc.format_message(), exc.exit_code)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        # A full disk can hit any write (a tokenizer copy, a report): not a bug, so one line.
        where = exc.filename2 or exc.filename or "a file"
        _fail(f"writing {where} failed: {exc.strerror} (disk full? free space and rerun)", 1)
    if isinstance(code, int) and code:  # typer.Exit(n) and Ctrl-C (130) return their code
        sys.exit(code)


def _typed(argv: list[str] | None, exc) -> str:
    """", got 'abc'": the value a user typed for the option click could not parse."""
    opts = getattr(getattr(exc, "param", None), "opts", None) or []
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return f", got {args[i + 1]!r}"
            if arg.startswith(opt + "="):
                return f", got {arg[len(opt) + 1:]!r}"
    return ""


def _fail(message: str, code: int) -> None:
    # escape: messages name TOML sections like [corpus], which rich would eat as markup
    # redact_text: a message names the location that failed, never the credentials in it
    err.print(f"[red]error:[/red] {escape(redact_text(message, _TYPED_SECRETS))}",
              highlight=False,
              soft_wrap=True)
    sys.exit(code)


def app_verbs() -> list[str]:
    return [c.name or c.callback.__name__ for c in app.registered_commands]


if __name__ == "__main__":
    main()
