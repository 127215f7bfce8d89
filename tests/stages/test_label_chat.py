"""Chat and packed data end to end (format 1.3): label conversations and plain text with
templates, masks and per-sample attention, then train, evaluate and audit on them; bad input is
one line naming the file and row."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from stages import audit, evaluate, label, train
from tests.conftest import REPO, WORDS, run_cli

TEMPLATE = REPO / "data/chat/headline.jinja"


def _conversations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = lambda lo, hi: " ".join(rng.choice(WORDS, rng.integers(lo, hi)))  # noqa: E731
        messages = [{"role": "user", "content": words(2, 8)},
                    {"role": "assistant", "content": words(1, 3)}]
        if i % 3 == 0:  # some multi-turn conversations with a system prompt
            messages = [{"role": "system", "content": "be brief"}, *messages,
                        {"role": "user", "content": words(1, 3)},
                        {"role": "assistant", "content": words(1, 3)}]
        out.append({"id": f"c{i}", "messages": messages})
    return out


@pytest.fixture(scope="module")
def chat_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _conversations(60)))
    return path


def _cfg(corpus, teacher, out, **kw) -> label.LabelConfig:
    opts = dict(corpus=str(corpus), teacher=str(teacher), out=str(out), top_k=4, seq_len=64,
                shard_rows=8, batch_size=8, quiet=True, device="cpu", validation_fraction=0.2,
                messages_column="messages", chat_template=str(TEMPLATE), id_column="id")
    return label.LabelConfig(**{**opts, **kw})


def _labels_by_sample(root) -> dict:
    """{(doc id, position in the sample): (ids, logprobs)} at every trained position."""
    ds = SoftLabelDataset(root)
    out = {}
    for split in ds.shards:
        for shard in ds.split_shards(split):
            table = ds.read_table(shard)
            b = ds.decode(table)
            for r, docs in enumerate(table.column("doc_ids").to_pylist()):
                seg = b["segment_ids"][r].numpy()
                for n, doc in enumerate(docs, 1):
                    at = np.flatnonzero(seg == n)
                    for i, p in enumerate(at):
                        if b["loss_mask"][r, p]:
                            keep = b["label_mask"][r, p].numpy()
                            out[doc, i] = (b["topk_ids"][r, p].numpy()[keep],
                                           b["topk_logprobs"][r, p].numpy()[keep])
    return out


def test_chat_label_train_evaluate_audit(tmp_path, chat_corpus, tiny_teacher):
    out = tmp_path / "ds"
    manifest = label.run(_cfg(chat_corpus, tiny_teacher, out))
    assert manifest["format_version"] == "1.3"
    assert manifest["labels"]["loss_mask"] and manifest["labels"]["segments"]
    samples = manifest["samples"]
    assert samples["pack"] == "packed" and samples["train_on"] == "assistant"
    assert samples["chat_template"]["sha256"] == manifest["tokenizer"]["chat_template_sha256"]
    assert samples["samples"] == 60 and 0 < samples["trained_fraction"] < 0.5
    assert validate_dataset(out)[0] == []
    # positions outside the mask hold no entries
    ds = SoftLabelDataset(out)
    table = ds.read_table(ds.split_shards("train")[0])
    counts = np.concatenate(table.column("label_counts").to_pylist())
    mask = np.concatenate(table.column("loss_mask").to_pylist())
    assert (counts[~mask] == 0).all() and (counts[mask] == 4).all()
    # a rerun is a no-op, and `pipeline run` sees the dataset as complete
    assert label.is_complete(_cfg(chat_corpus, tiny_teacher, out))
    assert label.run(_cfg(chat_corpus, tiny_teacher, out))["created_at"] == manifest["created_at"]
    # audit re-runs the teacher with the same per-sample attention: the stored tail matches
    report = audit.run(audit.AuditConfig(labels=str(out), teacher=str(tiny_teacher), rows=8,
                                         device="cpu"))
    assert 0 < report["positions"] < 8 * 64  # trained positions of the first 8 rows only
    assert report["tail_mass_max_error"] < 1e-5 and report["entries_per_position"] == 4
    student = tmp_path / "s.toml"
    student.write_text('name = "s"\n[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\n'
                       'd_model = 32\n[train]\nmax_steps = 3\nbatch_size = 4\neval_every = 3\n')
    runs = train.run(train.TrainConfig(labels=str(out), students=[str(student)],
                                       out=str(tmp_path / "runs"), device="cpu", quiet=True))
    run_dir = runs["s"]
    assert (run_dir / "chat_template.jinja").read_text() == TEMPLATE.read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    results = evaluate.run(evaluate.EvaluateConfig(
        labels=str(out), runs=[str(run_dir)], teacher=str(tiny_teacher),
        out=str(tmp_path / "report"), device="cpu", quiet=True, bench_warmup=0,
        bench_repeats=1))
    teacher_row = next(r for r in results["rows"] if r["role"] == "teacher")
    assert teacher_row["fidelity_positions"] == teacher_row["positions"] > 0
    # a model whose own chat template differs is refused, like a different tokenizer
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (other / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(Exception, match="chat template .* differs"):
        evaluate.run(evaluate.EvaluateConfig(labels=str(out), runs=[str(other)],
                                             out=str(tmp_path / "r2"), device="cpu",
                                             quiet=True))


def test_packed_labels_equal_alone(tmp_path, chat_corpus, tiny_teacher):
    """Every sample's labels are the same packed with others as alone in a padded row."""
    kw = dict(logprob_encoding="fp32")
    packed = label.run(_cfg(chat_corpus, tiny_teacher, tmp_path / "p", pack="packed", **kw))
    label.run(_cfg(chat_corpus, tiny_teacher, tmp_path / "n", pack="none", **kw))
    assert packed["summary"]["rows"] < 60  # several conversations share rows
    a, b = _labels_by_sample(tmp_path / "p"), _labels_by_sample(tmp_path / "n")
    assert a.keys() == b.keys() and len(a) > 100
    for key, (ids, lp) in a.items():
        order_a, order_b = np.argsort(ids), np.argsort(b[key][0])
        assert np.array_equal(ids[order_a], b[key][0][order_b]), key
        np.testing.assert_allclose(lp[order_a], b[key][1][order_b], atol=1e-5)


def test_concat_chat_and_train_on(tmp_path, chat_corpus, tiny_teacher):
    """--pack concat keeps the 1.x stream (no segment ids) with a loss mask; --train-on all and
    last-turn change only which positions hold labels."""
    m = label.run(_cfg(chat_corpus, tiny_teacher, tmp_path / "c", pack="concat"))
    assert "segments" not in m["labels"] and m["labels"]["loss_mask"]
    fractions = {}
    for on in ("all", "assistant", "last-turn"):
        m = label.run(_cfg(chat_corpus, tiny_teacher, tmp_path / on, train_on=on))
        fractions[on] = m["samples"]["trained_fraction"]
    assert fractions["all"] > fractions["assistant"] > fractions["last-turn"] > 0
    # the figure the issue asks for: bytes with assistant-only masks ÷ labeling every position
    b = {on: json.loads((tmp_path / on / "manifest.json").read_text())["summary"]["bytes"]
         for on in ("all", "assistant")}
    assert b["assistant"] < 0.8 * b["all"]  # small shards: tokens and Parquet footers dominate


def test_prompt_response_parquet_and_plain_text_packing(tmp_path, tiny_corpus, tiny_teacher):
    rows = [{"q": f"question {w}", "a": f"answer {w}"} for w in WORDS[:30]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    m = label.run(_cfg(tmp_path / "pairs.parquet", tiny_teacher, tmp_path / "pr",
                       messages_column=None, prompt_column="q", response_column="a",
                       id_column=None, pack="none"))
    assert m["samples"]["samples"] == 30 and m["summary"]["rows"] == 30
    text = dict(messages_column=None, chat_template=None, id_column=None)
    m = label.run(_cfg(tiny_corpus, tiny_teacher, tmp_path / "tp", pack="packed", **text))
    assert m["format_version"] == "1.3" and m["samples"]["train_on"] == "all"
    assert validate_dataset(tmp_path / "tp")[0] == []
    m = label.run(_cfg(tiny_corpus, tiny_teacher, tmp_path / "legacy", **text))
    assert m["format_version"] == "1.2" and "samples" not in m  # plain text keeps the 1.x layout


def _bad(tmp_path, rows, *extra):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_cli("label", "--corpus", path, "--messages-column", "messages",
                   "--chat-template", TEMPLATE, "--teacher", tmp_path.parent / "teacher-link",
                   "--out", tmp_path / "out", "--top-k", "4", "--seq-len", "32", "--quiet",
                   "--device", "cpu", *extra, check=False)


@pytest.mark.parametrize("row, extra, says", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, (), "unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
     (), "empty assistant turn"),
    ({"messages": [{"role": "user", "content": " ".join(["the market rose"] * 30)},
                   {"role": "assistant", "content": "shares fell"}]},
     ("--overlong", "refuse"), "more than --seq-len 32; raise --seq-len"),
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
     (), "failed to render (unsupported role tool)"),
])
def test_bad_input_is_one_line(tmp_path, tiny_teacher, row, extra, says):
    link = tmp_path.parent / "teacher-link"
    if not link.exists():
        link.symlink_to(tiny_teacher)
    good = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}]}
    proc = _bad(tmp_path, [good, row], *extra)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.jsonl:2: " in lines[0] and says in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_option_refusals(tmp_path, tiny_corpus, tiny_teacher):
    text = dict(messages_column=None, chat_template=None, id_column=None)
    with pytest.raises(Exception, match="--train-on assistant needs a conversation corpus"):
        label.run(_cfg(tiny_corpus, tiny_teacher, tmp_path / "x", train_on="assistant", **text))
    with pytest.raises(Exception, match="has no chat template"):
        label.run(_cfg(tiny_corpus, tiny_teacher, tmp_path / "y", chat_template=None,
                       messages_column="messages", id_column=None))
