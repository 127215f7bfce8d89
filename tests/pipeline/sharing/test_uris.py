"""Credentials never travel with a dataset nor appear in what the tool prints (issue #20,
"Security"): user info and query tokens are stripped from stored and printed URIs, and no
environment value is stored."""

import os

import pytest

from pipeline.io.uris import has_secret, redact, redact_text
from stages.label import LabelConfig, plan_params
from tests.conftest import run_cli

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzSECRET"


@pytest.mark.parametrize("uri, clean", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/corpus/docs.jsonl", "s3://bucket/corpus/docs.jsonl"),
    ("s3://user@bucket/p", "s3://bucket/p"),
    ("https://host.example/c.jsonl?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&"
     f"X-Amz-Signature={SECRET}&versionId=3", "https://host.example/c.jsonl?versionId=3"),
    (f"gs://bucket/x?token={SECRET}", "gs://bucket/x"),
    (f"https://acct.blob.core.windows.net/c/x?sv=2024&sig={SECRET}", 
     "https://acct.blob.core.windows.net/c/x"),
    ("/home/me/corpus", "/home/me/corpus"),
    ("builtin:bbc-news", "builtin:bbc-news"),
    ("hf:org/model", "hf:org/model"),
])
def test_redact_strips_user_info_and_query_tokens(uri, clean):
    assert redact(uri) == clean
    assert has_secret(uri) == (uri != clean)
    assert SECRET not in redact(uri)


def test_redact_text_cleans_every_uri_in_a_message():
    msg = (f"cannot read s3://K:{SECRET}@bucket/ds (denied); also "
           f"https://h/x?X-Amz-Signature={SECRET}.")
    out = redact_text(msg)
    assert SECRET not in out and "s3://bucket/ds (denied)" in out and "https://h/x" in out


def test_plan_and_manifest_record_the_corpus_without_credentials():
    cfg = LabelConfig(corpus=f"s3://AKIA:{SECRET}@bucket/c?token={SECRET}", out="x",
                      teacher="t", top_k=4, seq_len=16)

    class Spec:
        def as_dict(self):
            return {}

    params = plan_params(cfg, Spec(), "tok", "teach")
    assert params["corpus"]["uri"] == "s3://bucket/c"


def test_card_and_inspect_never_show_a_stored_secret(dataset, tmp_path):
    """A manifest written by an older release (or by hand) with a secret: the card and
    `inspect` still print the URI without it."""
    import json
    import shutil

    from pipeline.softlabels.card import render_card

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    m = json.loads((ds / "manifest.json").read_text())
    m["corpus"]["uri"] = f"s3://AKIA:{SECRET}@bucket/c?X-Amz-Signature={SECRET}"
    m["teacher"]["spec"] = f"https://h/t?token={SECRET}"
    (ds / "manifest.json").write_text(json.dumps(m))
    assert SECRET not in render_card(m)
    shown = run_cli("inspect", ds).stdout
    assert SECRET not in shown and "s3://bucket/c" in shown


def test_no_environment_value_is_stored(tmp_path, tiny_corpus, tiny_teacher):
    """A label run with secrets in its environment: no file of the dataset holds one."""
    marker = "ENVSECRET0123456789"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": marker, "AWS_SESSION_TOKEN": marker,
           "HF_TOKEN": marker, "SOFTLABELS_MARKER": marker}
    out = tmp_path / "ds"
    run_cli("label", "--corpus", tiny_corpus, "--teacher", tiny_teacher, "--out", out,
            "--top-k", "4", "--seq-len", "16", "--shard-rows", "16", "--limit-docs", "10",
            "--quiet", "--device", "cpu", env=env)
    for f in out.rglob("*"):
        if f.is_file():
            assert marker.encode() not in f.read_bytes(), f


def test_errors_on_object_storage_never_echo_credentials(s3):
    """An unreadable URI typed with credentials: one line, the URI without them."""
    proc = run_cli("inspect", f"s3://AKIA:{SECRET}@nobucket/ds?token={SECRET}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and "wJalr" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_secrets_in_finds_the_pieces_a_client_library_may_quote():
    from pipeline.io.uris import secrets_in

    found = secrets_in(f"s3://AKIAEXAMPLE:{SECRET}@bucket/x?X-Amz-Signature=abcdef&v=1")
    assert SECRET in found and "AKIAEXAMPLE" in found and "abcdef" in found and "1" not in found
    assert redact_text(f'Invalid bucket name "AKIAEXAMPLE:{SECRET}@bucket"', found) \
        == 'Invalid bucket name "***@bucket"'


STUDENT = ('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 32\n'
           '[train]\nbatch_size = 8\nmax_steps = 2\n')


def test_a_run_folder_records_the_dataset_without_credentials(dataset, tmp_path):
    """config.toml of a run names its dataset: typed with user info or a query token, it is
    stored without them (and a rerun still compares the rest of the config)."""
    from pipeline.softlabels.reader import SoftLabelDataset
    from pipeline.training.students import load_student
    from stages.train import TrainConfig, resolved_config

    (tmp_path / "s.toml").write_text(STUDENT)
    spec, ds = load_student(tmp_path / "s.toml"), SoftLabelDataset(dataset)
    for typed, clean in ((f"s3://AKIA:{SECRET}@bucket/ds", "s3://bucket/ds"),
                         (f"https://h/ds?X-Amz-Signature={SECRET}&v=2", "https://h/ds?v=2")):
        cfg = TrainConfig(labels=typed, students=[str(tmp_path / "s.toml")], out="runs")
        data = resolved_config(spec, ds, cfg)["data"]
        assert data["labels"] == clean and SECRET not in str(data)


def test_train_on_a_credential_uri_never_echoes_it(dataset, tmp_path, s3):
    """`train --labels s3://KEY:SECRET@...`: one line without the secret, no run folder."""
    (tmp_path / "s.toml").write_text(STUDENT)
    proc = run_cli("train", "--labels", f"s3://AKIA:{SECRET}@bucket/ds?token={SECRET}",
                   "--student", tmp_path / "s.toml", "--out", tmp_path / "runs", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and "wJalr" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for f in (tmp_path / "runs").rglob("*") if (tmp_path / "runs").exists() else []:
        assert not f.is_file() or SECRET.encode() not in f.read_bytes()
