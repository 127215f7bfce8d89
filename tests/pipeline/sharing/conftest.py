"""Fixtures of the sharing tests: one small labeled dataset (format 1.2, top-k 4), built once per
module, and a moto S3 server on loopback (tests/interop.py) for the object-storage cases."""

import pytest

from stages.label import LabelConfig, run
from tests.interop import moto_s3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("ds") / "labels"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                    seq_len=16, shard_rows=16, batch_size=8, validation_fraction=0.2,
                    limit_docs=40, quiet=True, device="cpu"))
    return out


@pytest.fixture
def s3(tmp_path):
    with moto_s3("bucket", SOFTLABELS_CACHE=str(tmp_path / "cache")) as env:
        yield env
