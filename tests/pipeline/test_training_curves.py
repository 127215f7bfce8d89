"""The training-curve plot compares like with like: cross-entropy with cross-entropy for every
run, the KD term on its own axis, never a KD student's total loss (a KD/CE mix) next to a
baseline's pure CE."""

import json

from pipeline.evaluation.plots import CURVE_PANELS, plot_training_curves, training_curves


def run_dir(tmp_path, name, kind, records):
    d = tmp_path / name
    d.mkdir()
    (d / "config.toml").write_text(f'[loss]\nkind = "{kind}"\n')
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"name": name, "role": "student", "path": str(d)}


def test_each_panel_holds_one_quantity_for_every_run(tmp_path):
    kd = run_dir(tmp_path, "kd", "kl_tail", [
        {"step": 1, "loss": 3.0, "kd": 0.4, "ce": 5.6},
        {"step": 2, "loss": 2.9, "kd": 0.3, "ce": 5.5, "val_loss": 3.1, "val_kd": 0.35,
         "val_ce": 5.8}])
    base = run_dir(tmp_path, "base", "ce", [
        {"step": 1, "loss": 6.1, "ce": 6.1},
        {"step": 2, "loss": 6.0, "ce": 6.0, "val_loss": 6.2, "val_ce": 6.2}])
    rows = [{"name": "teacher", "role": "teacher", "path": "t"}, kd, base]
    ce, kd_panel = training_curves(rows)
    assert [key for key, _, _ in CURVE_PANELS] == ["ce", "kd"]
    assert {(label, key): values for label, key, _, values in ce} == {
        ("kd (kl_tail)", "ce"): [5.6, 5.5], ("kd (kl_tail)", "val_ce"): [5.8],
        ("base (ce)", "ce"): [6.1, 6.0], ("base (ce)", "val_ce"): [6.2]}
    assert {(label, key): values for label, key, _, values in kd_panel} == {
        ("kd (kl_tail)", "kd"): [0.4, 0.3], ("kd (kl_tail)", "val_kd"): [0.35]}
    drawn = {v for panel in (ce, kd_panel) for *_, values in panel for v in values}
    assert not drawn & {3.0, 2.9, 3.1}  # the KD student's total loss is on no axis
    fig = plot_training_curves(rows)
    assert fig is not None and len(fig.axes) == 2  # CE panel and KD panel
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_no_metrics_no_plot(tmp_path):
    assert plot_training_curves([{"name": "x", "path": str(tmp_path)}]) is None
