"""The "Loading with other tools" recipes of docs/FORMAT.md, run as written against real
datasets: every ```python block tagged `# recipe: NAME` is executed (manifest block first, in one
namespace, with DATASET replaced by the dataset folder) and its results are checked against the
pipeline's own reader."""

import os
import re

import numpy as np
import pytest

from pipeline.softlabels.reader import SoftLabelDataset
from stages.label import LabelConfig, run
from tests.conftest import REPO

FORMAT = REPO / "docs" / "FORMAT.md"
OPTS = dict(seq_len=16, shard_rows=24, batch_size=16, limit_docs=30, validation_fraction=0.2,
            quiet=True)


def recipes() -> dict[str, str]:
    section = FORMAT.read_text().split("## Loading with other tools", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    tagged = {m.group(1): b for b in blocks if (m := re.match(r"# recipe: (\w+)\n", b))}
    assert len(tagged) == len(blocks), "every python block of the section is a tagged recipe"
    return tagged


def run_recipe(dataset, *names: str) -> dict:
    """Run the manifest block, the 1.2 decode helper, then `names`, in one namespace."""
    ns: dict = {}
    for name in ("manifest", "decode", *names):
        exec(compile(recipes()[name].replace("DATASET", str(dataset)), f"recipe {name}", "exec"),
             ns)
    return ns


@pytest.fixture(scope="module")
def topk(tmp_path_factory, tiny_corpus, tiny_teacher):
    """A default dataset: format 1.2 (ids ascending, delta-coded)."""
    out = tmp_path_factory.mktemp("recipes") / "topk"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                    **OPTS))
    return out


@pytest.fixture(scope="module")
def topk_v11(tmp_path_factory, tiny_corpus, tiny_teacher):
    """The same labels in the rank-order layout of 1.0/1.1 (`--id-encoding rank`)."""
    out = tmp_path_factory.mktemp("recipes") / "topk_v11"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                    id_encoding="rank", **OPTS))
    return out


def topp(out, tiny_corpus, tiny_teacher, **kw):
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher),
                    mode="topp", top_p=0.5, max_k=6, logprob_encoding="u8", **OPTS, **kw))
    return out


def per_shard_mass(dataset) -> dict[str, tuple[float, int]]:
    """The reference: each train shard's mean 1 - tail_mass, decoded by our reader."""
    ds = SoftLabelDataset(dataset)
    out = {}
    for shard in ds.split_shards("train"):
        tail = ds.decode(ds.read_table(shard))["tail_mass"].double()
        out[str(dataset / shard.rel)] = (float((1 - tail).mean()), tail.numel())
    return out


def test_every_recipe_is_tested():
    assert set(recipes()) == {"manifest", "datasets", "polars", "duckdb", "numpy", "variable",
                              "decode", "datasets_v11", "numpy_v11", "variable_v11"}


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # never ~/.cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("dataset, recipe", [("topk", "datasets"), ("topk_v11", "datasets_v11")])
def test_datasets_load_dataset(request, hf_offline, dataset, recipe):
    topk = request.getfixturevalue(dataset)
    ns = run_recipe(topk, recipe)
    ref = SoftLabelDataset(topk)
    first = ref.decode(ref.read_table(ref.split_shards("train")[0]))
    assert ns["ds"]["train"].num_rows == sum(s.rows for s in ref.split_shards("train"))
    assert ns["ds"]["validation"].num_rows == sum(s.rows for s in ref.split_shards("validation"))
    assert np.array_equal(ns["ids"], first["topk_ids"][0].numpy())
    assert np.allclose(ns["logprobs"], first["topk_logprobs"][0].numpy())
    assert np.array_equal(ns["tail"], first["tail_mass"][0].numpy())


def test_polars_mean_topk_mass_per_shard(topk):
    got = run_recipe(topk, "polars")["per_shard"]
    want = per_shard_mass(topk)
    assert got["shard"].to_list() == sorted(want)
    for shard, mass, positions in got.iter_rows():
        assert positions == want[shard][1] and mass == pytest.approx(want[shard][0], abs=1e-6)


def test_duckdb_mean_topk_mass_per_shard(topk):
    got = run_recipe(topk, "duckdb")["per_shard_sql"]
    want = per_shard_mass(topk)
    assert [os.path.normpath(s) for s, _, _ in got] == sorted(want)
    for shard, mass, positions in got:
        assert positions == want[shard][1] and mass == pytest.approx(want[shard][0], abs=1e-6)


@pytest.mark.parametrize("dataset, recipe", [("topk", "numpy"), ("topk_v11", "numpy_v11")])
def test_numpy_decode(request, dataset, recipe):
    topk = request.getfixturevalue(dataset)
    ns = run_recipe(topk, recipe)
    ref = SoftLabelDataset(topk)
    want = ref.decode(ref.read_table(ref.split_shards("validation")[0]))["topk_ids"]
    assert np.array_equal(ns["ids"], want.numpy())


@pytest.mark.parametrize("recipe, kw", [("variable", {}),
                                        ("variable_v11", {"id_encoding": "rank"})])
def test_variable_modes_decode(tmp_path, tiny_corpus, tiny_teacher, recipe, kw):
    out = topp(tmp_path / "topp", tiny_corpus, tiny_teacher, **kw)
    ns = run_recipe(out, recipe)
    ref = SoftLabelDataset(out)
    want = ref.decode(ref.read_table(ref.split_shards("train")[0]))
    k = ns["k"]
    mask = want["label_mask"].reshape(-1, k).numpy()
    assert np.array_equal(ns["mask"], mask)
    assert np.array_equal(ns["padded"][mask], want["topk_ids"].reshape(-1, k).numpy()[mask])
    assert np.allclose(ns["lp"], want["topk_logprobs"].reshape(-1, k).numpy()[mask], atol=1e-6)


# -- compatibility: a 1.1 reader on a 1.2 dataset fails loudly, never misreads -----------------

@pytest.mark.parametrize("recipe", ["datasets_v11", "numpy_v11", "variable_v11"])
def test_v11_recipes_fail_loudly_on_1_2(request, hf_offline, tmp_path, tiny_corpus,
                                        tiny_teacher, recipe):
    dataset = (topp(tmp_path / "topp", tiny_corpus, tiny_teacher) if recipe == "variable_v11"
               else request.getfixturevalue("topk"))
    with pytest.raises(Exception, match="topk_ids"):
        run_recipe(dataset, recipe)


def test_v11_queries_fail_loudly_on_1_2(topk):
    """The 1.1 way to take the teacher's argmax or top log-probability, in polars and DuckDB:
    on 1.2 shards the rank-order columns are gone, so each query errors out."""
    import duckdb
    import polars as pl

    files = [str(p) for p in sorted((topk / "shards/train").glob("*.parquet"))]
    for column in ("topk_ids", "topk_logprobs"):
        with pytest.raises(pl.exceptions.ColumnNotFoundError):
            pl.scan_parquet(files).select(pl.col(column).list.first()).collect()
        with pytest.raises(duckdb.BinderException):
            duckdb.sql(f"SELECT {column}[1] FROM read_parquet({files})").fetchall()
