"""The sharing verbs (issue #20): publish, ls, pull, export, import, view. Thin shells over
pipeline/sharing; commands.py registers them on its app (`register`), so this module never
imports it."""

import typer

from pipeline.cli.summary import say

LICENSE_HELP = "SPDX id or name, recorded in the manifest and the card (default: unknown)."


def register(app: typer.Typer, out, err) -> None:
    @app.command()
    def publish(
        dataset: str = typer.Argument(..., help="Dataset directory or URI."),
        dest: str = typer.Argument(..., help="Destination folder or URI (s3://, hf://, ...)."),
        version: int | None = typer.Option(None, "--version", min=1,
                                           help="Publish this version (default: the latest)."),
        license: str | None = typer.Option(None, "--license", help="The dataset's licence. "
                                           + LICENSE_HELP),
        corpus_license: str | None = typer.Option(None, "--corpus-license",
                                                  help="The corpus's licence."),
        teacher_license: str | None = typer.Option(None, "--teacher-license",
                                                   help="The teacher model's licence (many "
                                                        "restrict training on its outputs)."),
        corpus_name: str | None = typer.Option(None, "--corpus-name",
                                               help="Name the corpus by this instead of its "
                                                    "path/URI (default: redacted, local paths "
                                                    "cut to their last part)."),
        teacher_name: str | None = typer.Option(None, "--teacher-name",
                                                help="Name the teacher by this instead of its "
                                                     "path/spec."),
        audit: str | None = typer.Option(None, "--audit", help="JSON from `pipeline audit "
                                         "--json`, shown in the card."),
    ) -> None:
        """Copy a dataset to DEST, verifying every shard, as a Hugging Face dataset repository
        (README.md card with `configs`); the manifest is written last."""
        from pipeline.io.uris import redact
        from pipeline.sharing.publish import publish as run
        from pipeline.sharing.publish import unknown_licenses

        m, copied = run(dataset, dest, version,
                        {"dataset": license, "corpus": corpus_license,
                         "teacher": teacher_license},
                        {"corpus": corpus_name, "teacher": teacher_name}, audit)
        for key in unknown_licenses(m):
            flag = "--license" if key == "dataset" else f"--{key}-license"
            err.print(f"warning: the {key} licence is unknown ({flag}); the card says so",
                      highlight=False, soft_wrap=True)
        shards = sum(len(s) for s in m["splits"].values())
        say(out, f"published {shards} shards ({copied} copied, {shards - copied} already there), "
                 f"{m['summary']['rows']:,} rows to {redact(dest)}")

    @app.command("ls")
    def ls(uri: str = typer.Argument(..., help="Folder or prefix (local, s3://, ...)."),
           as_json: bool = typer.Option(False, "--json", help="One JSON list, for scripts.")
           ) -> None:
        """List the datasets under a prefix, one line each, reading only their manifests."""
        import json
        import sys

        from pipeline.io.uris import redact
        from pipeline.sharing.listing import COLUMNS, list_datasets

        rows = list_datasets(uri)
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        if not rows:
            say(out, f"no datasets under {redact(uri)}")
        for r in rows:  # one line each, key=value: greppable, never cut by a table's width
            say(out, r["name"] + "  " + "  ".join(
                f"{c}={r[c]:,}" if isinstance(r[c], int) else f"{c}={r[c]}"
                for c in COLUMNS[1:]))

    @app.command()
    def pull(source: str = typer.Argument(..., help="Dataset directory or URI to pull from."),
             dest: str = typer.Argument(..., help="Where the subset goes (a new folder)."),
             split: list[str] | None = typer.Option(None, "--split",
                                                    help="Only this split (repeatable)."),
             shards: str | None = typer.Option(None, "--shards",
                                               help="Only shards START:END of each split."),
             max_positions: int | None = typer.Option(None, "--max-positions", min=1,
                                                      help="Whole shards, in order, until this "
                                                           "many positions per split."),
             ) -> None:
        """Download a verified subset that is itself a dataset (resumable: rerun after a kill)."""
        from pipeline.io.uris import redact
        from pipeline.sharing.pull import pull as run

        m, done = run(source, dest, split or None, shards, max_positions)
        say(out, f"pulled {m['subset']['description']} ({done} downloaded), "
                 f"{m['summary']['rows']:,} rows into {redact(dest)}")

    @app.command()
    def export(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
               to: str = typer.Option(..., "--to", help="Format: jsonl, or axolotl-kd (a "
                                      "Parquet file for axolotl 0.19's KD trainer)."),
               dest: str = typer.Argument(..., help="Output file (local path or URI)."),
               split: str = typer.Option("train", "--split", help="The split to export.")
               ) -> None:
        """Write a split for other trainers: JSON lines (input_ids, topk_ids, topk_logprobs,
        tail_mass per row, entries in rank order), or axolotl's pre-tokenized KD columns."""
        from pipeline.io.uris import redact
        from pipeline.sharing.export import export as run

        rows = run(dataset, to, dest, split)
        say(out, f"exported {rows:,} rows of {split} to {redact(dest)} ({to})")

    @app.command()
    def view(dataset: str = typer.Argument(..., help="Dataset directory or URI."),
             out_path: str = typer.Option(..., "--out", help="The HTML file to write (local "
                                          "path or URI)."),
             rows: int = typer.Option(20, "--rows", min=1, max=1000,
                                      help="Rows shown in the text browser."),
             split: str | None = typer.Option(None, "--split", help="The split to sample "
                                              "(default: validation, else the first)."),
             seed: int = typer.Option(0, "--seed", help="Which row groups and rows are "
                                      "sampled."),
             ) -> None:
        """Write one static, self-contained HTML page to look inside a dataset: the card,
        plots, and sample rows with every token shaded by the teacher's probability of it."""
        from pipeline.io.uris import redact
        from pipeline.sharing.view import view as run

        sample, size = run(dataset, out_path, rows, split, seed)
        say(out, f"wrote {redact(out_path)} ({size / 1024:,.0f} KiB): {len(sample.rows)} rows "
                 f"of {sample.split}, figures from {sample.positions:,} positions in "
                 f"{sample.row_groups} row groups")
    @app.command("import")
    def import_(
        source: str = typer.Argument(..., help="JSONL file (local path or URI): the train split."),
        dest: str = typer.Argument(..., help="The new dataset folder (or URI)."),
        fmt: str = typer.Option(..., "--from", help="Input format: jsonl (what `pipeline "
                                "export --to jsonl` writes)."),
        tokenizer: str = typer.Option(..., "--tokenizer", help="The tokenizer.json the ids "
                                      "belong to (checked, hashed and copied in)."),
        teacher: str = typer.Option(..., "--teacher", help="The teacher's name, recorded as "
                                    "provenance (no model is loaded)."),
        teacher_sha256: str | None = typer.Option(None, "--teacher-sha256", help="The teacher's "
                                                  "weights sha256, if known (lets `evaluate "
                                                  "--teacher` check it)."),
        corpus: str | None = typer.Option(None, "--corpus", help="The corpus's name, recorded "
                                          "as provenance."),
        validation: str | None = typer.Option(None, "--validation", help="A second JSONL file: "
                                              "the validation split."),
        vocab_size: int | None = typer.Option(None, "--vocab-size", min=1, help="The teacher's "
                                              "logit width when it exceeds the tokenizer's."),
        logprob_encoding: str = typer.Option("fp16", "--logprob-encoding",
                                             help="fp16 or fp32 log-probabilities on disk."),
        shard_rows: int = typer.Option(512, "--shard-rows", min=1, help="Rows per shard."),
    ) -> None:
        """Import teacher labels (JSON lines: input_ids, topk_ids, topk_logprobs, optional
        tail_mass) into a validated dataset; every row is checked before anything is written."""
        from pipeline.errors import PipelineError
        from pipeline.io.uris import redact
        from pipeline.sharing.importing import FORMATS, Provenance, import_jsonl

        if fmt not in FORMATS:
            raise PipelineError(f"--from {fmt}: supported formats are {', '.join(FORMATS)}")
        if logprob_encoding not in ("fp16", "fp32"):
            raise PipelineError(f"--logprob-encoding {logprob_encoding}: use fp16 or fp32")
        sources = {"train": source, **({"validation": validation} if validation else {})}
        m = import_jsonl(sources, dest, tokenizer, Provenance(teacher, teacher_sha256, corpus),
                         vocab_size, logprob_encoding, shard_rows)
        tail = ("derived (1 − Σ stored)" if m["imported"]["tail_mass"] == "derived"
                else "as stored")
        say(out, f"imported {m['summary']['rows']:,} rows (seq_len {m['seq_len']}, k "
                 f"{m['labels']['k']}, tail mass {tail}) into {redact(dest)}")
