"""The training figures' isometry-monitor panel: the series it draws, read back from a
hand-written metrics.json, and which figures a run folder gets."""
import numpy as np
import pytest

from isometry.results import io
from isometry.results import training_plots


def _entry(epoch, monitor):
  """A metrics.json epoch entry whose numbers are simple functions of the epoch."""
  entry = {"train_loss": 2.0 - 0.1 * epoch, "train_accuracy": 0.1 * epoch,
           "val_loss": 2.1 - 0.1 * epoch, "val_accuracy": 0.1 + 0.1 * epoch,
           "singular_values": {"min": 1.0 - 0.1 * epoch, "mean": 1.0, "std": 0.05 * epoch,
                               "max": 1.0 + 0.2 * epoch},
           "grad_norm_through_time": [1.0, 0.5, 0.25]}
  if monitor:
    entry["jacobian"] = {"mean": 10.0 ** -epoch, "mean_se": 0.1 * 10.0 ** -epoch,
                         "variance": 4.0 * 10.0 ** -epoch,
                         "variance_se": None if epoch == 2 else 0.5}
  return entry


def _metrics(monitor=True, members=2, epochs=2):
  return {"members": [
      {"config": {"label": "orth", "seed": seed, "gain": 1.0}, "status": "done",
       "initial": _entry(0, monitor), "epochs": [_entry(e, monitor) for e in range(1, epochs + 1)]}
      for seed in range(members)], "grad_norm_time_steps": [0, 1, 2]}


def test_monitor_series_reads_every_epoch_from_init():
  series = training_plots.monitor_series(_metrics()["members"][0])
  np.testing.assert_array_equal(series["epoch"], [0, 1, 2])
  np.testing.assert_allclose(series["mean"], [1.0, 0.1, 0.01])
  np.testing.assert_allclose(series["mean_se"], [0.1, 0.01, 0.001])
  np.testing.assert_allclose(series["variance"], [4.0, 0.4, 0.04])
  # A standard error JSON stored as null (non-finite) comes back as NaN.
  np.testing.assert_array_equal(series["variance_se"], [0.5, 0.5, np.nan])
  np.testing.assert_allclose(series["sv_min"], [1.0, 0.9, 0.8])
  np.testing.assert_allclose(series["sv_max"], [1.0, 1.2, 1.4])
  np.testing.assert_allclose(series["sv_std"], [0.0, 0.05, 0.1])


@pytest.mark.parametrize("monitor", [True, False])
def test_plot_run_draws_the_monitor_only_where_it_was_recorded(tmp_path, monitor):
  metrics = _metrics(monitor=monitor)
  assert training_plots.has_monitor(metrics) == monitor
  io.write_json(tmp_path / "metrics.json", metrics)
  paths = training_plots.plot_run(str(tmp_path))
  names = sorted(p.rsplit("/", 1)[-1] for p in paths)
  expected = ["curves.png", "gradients.png", "singular_values.png"]
  assert names == sorted(expected + (["monitor.png"] if monitor else []))
  for name in names:
    assert (tmp_path / name).stat().st_size > 1000
  assert (tmp_path / "monitor.png").exists() == monitor


def test_monitor_figure_has_one_row_per_member_up_to_the_cap(tmp_path, monkeypatch):
  monkeypatch.setattr(training_plots, "MONITOR_MEMBERS", 2)
  import matplotlib.pyplot as plt
  shown = {}
  save = io.save_figure

  def count_axes(fig, path):
    shown["axes"] = len(fig.axes)
    shown["title"] = fig.get_suptitle()
    save(fig, path)
  monkeypatch.setattr(io, "save_figure", count_axes)
  training_plots.plot_monitor(_metrics(members=3), str(tmp_path / "monitor.png"))
  assert shown["axes"] == 2 * 2 and "2 of 3 members" in shown["title"]
  assert not plt.get_fignums()   # the figure was closed
