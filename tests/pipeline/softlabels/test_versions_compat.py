"""Format 1.4's compatibility rule: a 1.3 reader reads the latest version of a 1.4 dataset.

The reader of the commit before versions (format 1.3) is extracted with `git archive` and run
in a subprocess on a dataset with two versions: it must validate it and read the same rows as
the current reader. Skipped without git history.
"""

import io
import json
import subprocess
import sys
import tarfile

import pytest

import stages.label as L
from pipeline.softlabels.validate import validate_dataset
from tests.conftest import REPO, make_docs
from tests.stages.test_label_incremental import cfg, write_corpus

BEFORE_VERSIONS = "7781085"  # main with format 1.3, before dataset versions

READ = """
import json, sys
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
ds = SoftLabelDataset(sys.argv[1])
problems, summary = validate_dataset(sys.argv[1])
print(json.dumps({"problems": problems, "summary": summary}))
"""


def test_a_13_reader_reads_the_latest_version(tmp_path, tiny_teacher):
    proc = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_VERSIONS,
                           "pipeline"], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("no git history")
    old = tmp_path / "old"
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(old, filter="data")
    docs = make_docs(60, seed=3)
    corpus, out = write_corpus(tmp_path / "c.jsonl", docs), tmp_path / "ds"
    L.run(cfg(corpus, tiny_teacher, out))
    write_corpus(corpus, docs[3:] + [{"id": "z", "text": "the team won the game " * 9}])
    assert L.run(cfg(corpus, tiny_teacher, out))["format_version"] == "1.4"
    got = subprocess.run([sys.executable, "-c", READ, str(out)], cwd=old, capture_output=True,
                         text=True, env={"PYTHONPATH": str(old), "PATH": "/usr/bin:/bin"})
    assert got.returncode == 0, got.stderr[-2000:]
    result = json.loads(got.stdout)
    problems, summary = validate_dataset(out)
    assert result["problems"] == problems == [] and result["summary"] == summary
