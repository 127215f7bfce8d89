"""The `pipeline` command line (typer). Each verb is a thin shell over a stage's `run`.

Every user-facing failure is a PipelineError: printed as one red line on stderr, exit code 1
(2 for a bad job/student file). Tracebacks are reserved for bugs.
"""

import errno
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.errors import PipelineError

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline teacher labeling for knowledge distillation: label a corpus once "
                       "into Parquet soft labels, then train and evaluate many students from it.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Tokenizer utilities.")
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


@app.command()
def label(
    corpus: str = typer.Option(..., help="File, directory, glob of .parquet/.jsonl/.csv/.txt, "
                               "or builtin:bbc-news."),
    out_dir: str = typer.Option(..., "--out", help="Dataset directory (or URI, e.g. "
                                "s3://bucket/ds) to create or resume."),
    teacher: str | None = typer.Option(None, help="Teacher: model directory (config.json + "
                                          "model.safetensors + tokenizer.json), a Hugging Face "
                                          "folder, hf:NAME_OR_PATH, or a URI of a folder."),
    tokenizer: Path | None = typer.Option(None, help="tokenizers JSON; with --top-k 0 and no "
                                             "teacher, writes a tokenized dataset."),
    top_k: int = typer.Option(32, help="Soft-label entries kept per position; 0 = tokens only."),
    seq_len: int = typer.Option(256, help="Tokens per packed row."),
    batch_size: int = typer.Option(16, help="Rows per teacher forward."),
    shard_rows: int = typer.Option(512, help="Rows per Parquet shard."),
    row_group_rows: int = typer.Option(128, help="Rows per Parquet row group."),
    validation_fraction: float = typer.Option(0.02, help="Share of documents (by id hash) in "
                                              "the validation split."),
    logprob_encoding: str = typer.Option("fp16", help="fp16, fp32 or u8 log-probabilities "
                                         "(u8: linear on [--u8-min-logprob, 0], docs/FORMAT.md)."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset of ours in --out "
                                   "(removes only files the labeler wrote)."),
    limit_docs: int | None = typer.Option(None, help="Read only the first N documents."),
    text_column: str = typer.Option("text", help="Text column of parquet/jsonl/csv files."),
    id_column: str | None = typer.Option(None, help="Document id column (default: "
                                            "file:row)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    workers: int | None = typer.Option(None, help="Label on a local dask cluster of N worker "
                                       "processes (one shard per task; one GPU each if any)."),
    scheduler: str | None = typer.Option(None, help="Label on an existing dask cluster: "
                                         "tcp://HOST:PORT or a scheduler file."),
    mode: str = typer.Option("topk", help="topk (k per position), topp (smallest set reaching "
                             "--top-p) or sampled (--samples draws, importance weights)."),
    top_p: float = typer.Option(0.95, help="topp: mass each position's set must reach."),
    min_k: int = typer.Option(1, help="topp: fewest entries per position."),
    max_k: int = typer.Option(64, help="topp: most entries per position."),
    samples: int = typer.Option(64, help="sampled: draws N per position."),
    proposal_temperature: float = typer.Option(1.0, help="sampled: draw from the teacher at "
                                               "this temperature (weights stay unbiased)."),
    seed: int = typer.Option(0, help="sampled: seed of the draws (recorded; reproducible)."),
    u8_min_logprob: float = typer.Option(-16.0, help="u8: log-probability of the lowest code."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Let an hf: "
                                           "teacher run the Python code its repo ships."),
) -> None:
    """Run the teacher over a corpus once and write a soft-label dataset (resumable)."""
    from stages.label import LabelConfig, run

    manifest = run(LabelConfig(
        corpus=corpus, out=str(out_dir), teacher=teacher,
        tokenizer=str(tokenizer) if tokenizer else None, top_k=top_k, seq_len=seq_len,
        batch_size=batch_size, shard_rows=shard_rows, row_group_rows=row_group_rows,
        validation_fraction=validation_fraction, logprob_encoding=logprob_encoding,
        device=device, overwrite=overwrite, limit_docs=limit_docs, text_column=text_column,
        id_column=id_column, quiet=quiet, workers=workers, scheduler=scheduler, mode=mode,
        top_p=top_p, min_k=min_k, max_k=max_k, samples=samples,
        proposal_temperature=proposal_temperature, seed=seed, u8_min_logprob=u8_min_logprob,
        trust_remote_code=trust_remote_code))
    s = manifest["summary"]
    out.print(f"dataset {out_dir}: {s['rows']:,} rows, {s['positions']:,} positions, "
              f"{s['bytes']:,} bytes ({s['bytes_per_position']:.2f} B/position)")


@app.command()
def train(
    labels: str = typer.Option(..., help="Soft-label (or tokens-only) dataset directory or "
                               "URI."),
    student: list[Path] = typer.Option(..., help="Student TOML file; repeat for more students "
                                       "(all train from one read pass)."),
    out_dir: str = typer.Option(..., "--out", help="Runs directory (or URI): one folder per "
                                "student."),
    max_steps: int | None = typer.Option(None, help="Override every student's length: "
                                            "stop after N optimizer steps."),
    epochs: int | None = typer.Option(None, help="Override every student's length: E "
                                         "passes over the train split."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:N."),
    resume: bool = typer.Option(False, help="Continue unfinished run folders from their last "
                                "checkpoint."),
    num_workers: int = typer.Option(0, help="DataLoader worker processes reading shards."),
    data_seed: int = typer.Option(0, help="Seed of the shard/row shuffle (the read order)."),
    shuffle_rows: int = typer.Option(512, help="Rows shuffled together (shuffle buffer)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    workers: int | None = typer.Option(None, help="Train on a local dask cluster of N worker "
                                       "processes: one task per student."),
    scheduler: str | None = typer.Option(None, help="Train on an existing dask cluster: "
                                         "tcp://HOST:PORT or a scheduler file."),
) -> None:
    """Train students from a dataset, all in one read pass; resumable, skips finished ones.

    Under `torchrun --nproc-per-node N -m pipeline train ...` each student trains across the N
    processes (DDP; rank 0 writes the run folder)."""
    from stages.train import TrainConfig, run, summaries

    runs = run(TrainConfig(labels=str(labels), students=[str(s) for s in student],
                           out=str(out_dir), max_steps=max_steps, epochs=epochs, device=device,
                           resume=resume, num_workers=num_workers, data_seed=data_seed,
                           shuffle_rows=shuffle_rows, quiet=quiet, workers=workers,
                           scheduler=scheduler))
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    for name, s in summaries(runs).items():
        val = s.get("val_loss")
        out.print(f"{name}: {s['step']} steps, {s['tokens']:,} tokens, final loss "
                  f"{s['final'].get('loss', float('nan')):.4f}"
                  + (f", val_loss {val:.4f}" if val is not None else "")
                  + f" → {_run_location(out_dir, name, runs[name])}",
                  soft_wrap=True)


def _run_location(out_dir: str, name: str, local) -> str:
    """Where a run folder lives: the URI for --out on object storage (trained in staging)."""
    from pipeline.io.storage import is_remote

    return f"{out_dir.rstrip('/')}/{name}" if is_remote(out_dir) else str(local)


@app.command()
def validate(dataset: str = typer.Argument(..., help="Dataset directory or URI.")) -> None:
    """Check every shard: checksum, schema, counts, id range, log-prob and tail-mass sanity."""
    from pipeline.softlabels.validate import validate_dataset

    problems, summary = validate_dataset(dataset)
    for p in problems:
        err.print(f"[red]invalid:[/red] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    out.print(f"valid: {summary['shards']} shards, {summary['rows']:,} rows")


@app.command()
def inspect(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")
            ) -> None:
    """Show a dataset's card: teacher, tokenizer, corpus, labels, splits and sizes."""
    from pipeline.softlabels.manifest import load_manifest

    m = load_manifest(dataset)
    if as_json:
        sys.stdout.write(json.dumps(m, indent=2, sort_keys=True) + "\n")
        return
    t = Table(title=f"soft-label dataset {dataset}", show_header=False)
    teacher = m.get("teacher") or {}
    rows = [("format", m["format_version"]), ("created", m["created_at"]),
            ("teacher", f"{teacher.get('spec', 'none')} ({teacher.get('parameters', '-')} params)"),
            ("tokenizer", f"vocab {m['tokenizer']['vocab_size']}, "
                          f"sha256 {m['tokenizer']['sha256'][:12]}"),
            ("corpus", f"{m['corpus']['uri']} ({m['corpus']['documents_read']} docs)"),
            ("labels", ", ".join(f"{k}={v}" for k, v in m["labels"].items())),
            ("seq_len", str(m["seq_len"]))]
    for split, shards in m["splits"].items():
        rows.append((f"split {split}", f"{len(shards)} shards, "
                     f"{sum(s['rows'] for s in shards):,} rows"))
    mass = m["summary"].get("mean_topk_mass")
    rows.append(("mean top-k mass", "-" if mass is None else f"{mass:.4f}"))
    rows.append(("bytes/position", f"{m['summary']['bytes_per_position']:.2f}"))
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


@app.command()
def audit(labels: str = typer.Option(..., help="Soft-label dataset directory or URI."),
          teacher: str = typer.Option(..., help="The teacher that labeled it (sha256 checked)."),
          rows: int = typer.Option(64, help="Rows of the split to re-run the teacher on."),
          split: str = typer.Option("validation", help="Split to read rows from."),
          batch_size: int = typer.Option(8, help="Rows per teacher forward."),
          device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:N."),
          as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")
          ) -> None:
    """Re-run the teacher on N rows: full-vocabulary KL of the stored labels, coverage, bytes."""
    from stages.audit import AuditConfig, run

    r = run(AuditConfig(labels=str(labels), teacher=str(teacher), rows=rows, split=split,
                        batch_size=batch_size, device=device))
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n")
        return
    t = Table(title=f"label audit {labels} ({r['mode']}, {r['logprob_encoding']})",
              show_header=False)
    for key in ("positions", "kl_mean", "kl_max", "coverage", "entries_per_position",
                "tail_mass_max_error", "bytes_per_position"):
        v = r[key]
        t.add_row(key, f"{v:.6g}" if isinstance(v, float) else str(v))
    out.print(t)


@app.command()
def bigram(labels: str = typer.Option(..., help="Dataset directory or URI (any label mode)."),
           max_rows: int | None = typer.Option(None, help="Fit on at most N train rows.")
           ) -> None:
    """Fit a count-based bigram LM on the train split; print its validation cross-entropy."""
    from pipeline.evaluation.bigram import bigram_cross_entropy, fit_bigram, split_rows
    from pipeline.softlabels.reader import SoftLabelDataset

    ds = SoftLabelDataset(labels)
    model = fit_bigram(split_rows(ds, "train", max_rows), ds.vocab_size)
    ce = bigram_cross_entropy(model, split_rows(ds, "validation"))
    out.print(f"bigram validation cross-entropy: {ce:.4f} nats (perplexity {2.718281828**ce:.1f})")


@app.command()
def evaluate(
    labels: str = typer.Option(..., help="Soft-label dataset (its validation split is used)."),
    runs: list[str] = typer.Option(..., "--run", help="Run folder / model directory / "
                                   "hf:NAME_OR_PATH / URI; repeat."),
    teacher: str | None = typer.Option(None, help="The labeling teacher: adds a teacher row "
                                        "and speed/size ratios."),
    report: str = typer.Option(..., "--out", help="Report directory (or URI) to write."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:N."),
    max_rows: int | None = typer.Option(None, help="Score at most N validation rows."),
    batch_size: int = typer.Option(8, help="Rows per forward (also the timed batch)."),
    bench_repeats: int = typer.Option(10, help="Timed forwards per model, in interleaved "
                                      "rounds (median reported)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Let hf: models "
                                           "run the Python code their repos ship."),
) -> None:
    """Fidelity, quality, calibration, speed and size of students against their teacher."""
    from pipeline.evaluation.report import print_leaderboard
    from stages.evaluate import EvaluateConfig, run

    results = run(EvaluateConfig(
        labels=str(labels), runs=[str(r) for r in runs], out=str(report),
        teacher=str(teacher) if teacher else None, device=device, max_rows=max_rows,
        batch_size=batch_size, bench_repeats=bench_repeats, quiet=quiet,
        trust_remote_code=trust_remote_code))
    print_leaderboard(results, report, out)


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


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: str = typer.Option(..., help="Corpus to learn merges from (same forms as label)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size including specials."),
    out_file: Path = typer.Option(..., "--out", help="Where to write tokenizer.json."),
    text_column: str = typer.Option("text", help="Text column of tabular corpora."),
    limit_docs: int | None = typer.Option(None, help="Use only the first N documents."),
) -> None:
    """Train a byte-level BPE tokenizer (tokenizers) and save it as one JSON file."""
    from pipeline.labeling.corpus import CorpusSpec, read_texts
    from pipeline.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(read_texts(CorpusSpec(corpus, text_column), limit_docs),
                              vocab_size, out_file)
    out.print(f"tokenizer {out_file}: vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}")


def main(argv: list[str] | None = None) -> None:
    """The console entry point; `argv` (default: sys.argv[1:]) lets tests run it in process."""
    try:
        app(args=argv, prog_name="pipeline")
    except PipelineError as exc:
        # escape: messages name TOML sections like [corpus], which rich would eat as markup
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        # A full disk can hit any write (a tokenizer copy, a report): not a bug, so one line.
        where = exc.filename2 or exc.filename or "a file"
        msg = f"writing {where} failed: {exc.strerror} (disk full? free space and rerun)"
        err.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
