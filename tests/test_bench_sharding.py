"""The sharding benchmark: records workers decode each image once over the
cluster, folder workers the whole global batch each (real pipelines, tiny)."""

import json

import pytest

from tfsym3d import bench
from tfsym3d.bench import sharding


def test_sharding_is_a_registered_benchmark_with_the_package_conventions():
  module = bench.module("sharding")
  assert module is sharding
  assert set(module.DEFAULTS) == {"batch_size", "warmup", "repeats"}
  assert all(callable(getattr(module, f)) for f in ("add_flags", "run", "format"))


def test_decode_counts_and_ratios_from_the_workers_outcomes():
  assert sharding.decoded_per_batch("records", 8, 4) == 8
  assert sharding.decoded_per_batch("folder", 8, 4) == 32
  runs = [sharding.summarize("records", 2, [(32, 0.5), (32, 1.0)], 64),
          sharding.summarize("folder", 2, [(64, 2.0), (64, 1.5)], 64)]
  assert runs[0]["decoded_total"] == 64 and runs[1]["decoded_total"] == 128
  assert runs[0]["images_per_s_per_worker"] == [64.0, 32.0]
  assert runs[0]["images_per_s_total"] == 64.0 and runs[1]["images_per_s_total"] == 64.0
  assert sharding.ratios(runs) == {"2": {"decoded_folder_over_records": 2.0,
                                         "epoch_s_folder_over_records": 2.0}}


def test_workers_that_do_not_divide_the_batch_are_refused():
  with pytest.raises(ValueError, match="--sharding_workers"):
    sharding.sharding_benchmark(sharding.Settings(images=16, workers=(3,), batch_size=8))


def test_sharding_benchmark_tiny():
  settings = sharding.Settings(images=32, workers=(1, 2), batch_size=8, image_size=16,
                               shard_size=4)
  result = sharding.sharding_benchmark(settings, progress=False)
  json.dumps(result, allow_nan=False)
  assert {"device", "cpu", "gpus", "onednn", "load_avg_after"} <= result.keys()
  runs = {(r["layout"], r["workers"]): r for r in result["runs"]}
  assert list(runs) == [("records", 1), ("folder", 1), ("records", 2), ("folder", 2)]
  # Records: the epoch's 32 images in all, split between the workers;
  # folder: every worker decodes all 32.
  assert runs["records", 2]["decoded_per_worker"] == [16, 16]
  assert runs["folder", 2]["decoded_per_worker"] == [32, 32]
  for parts in (1, 2):
    assert runs["records", parts]["decoded_total"] == 32
    assert runs["folder", parts]["decoded_total"] == 32 * parts
    for layout in sharding.LAYOUTS:
      run = runs[layout, parts]
      assert all(x > 0 for x in run["images_per_s_per_worker"])
      assert run["images_per_s_total"] == pytest.approx(
          run["decoded_total"] / max(run["epoch_s_per_worker"]))
  assert result["ratios"]["2"]["decoded_folder_over_records"] == 2.0
  table = bench.format_table(result)
  assert "records" in table and "folder decodes 2.0x" in table and "device:" in table
