"""Records datasets: workers' disjoint shares, resume, damaged shards, prepare."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsym3d.data import records
from tfsym3d.data import sources


def _png(rng, size=12):
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def _write(root, num=48, shard_size=6, bad_image_at=None):
  rng = np.random.default_rng(0)
  writer = records.RecordSplitWriter(root, "train", num, shard_size)
  for i in range(num):
    image = b"not an image" if i == bad_image_at else _png(rng)
    writer.add(i, f"img{i:03d}", image)
  return writer.close()


def _names(stream, n):
  return [[x.decode() for x in batch.numpy()] for batch in stream.take(n)]


def test_two_workers_see_disjoint_images_that_cover_the_epoch(tmp_path):
  assert _write(tmp_path) == 48
  data = sources.DataSource("records", data_dir=str(tmp_path), image_size=8,
                            batch_size=8, seed=1)
  steps = data.train_size() // data.batch_size          # 6 steps of 8
  seen = []
  for part in (0, 1):
    # The very stream training builds for this worker (distributed_stream
    # passes the input pipeline id and count), plus its names in order.
    batches = [b.numpy() for b in data.train_stream(0, steps, part, 2).take(steps)]
    assert all(b.shape == (4, 8, 8, 3) for b in batches)
    seen.append(sum(_names(records.names_stream(str(tmp_path), "train", 8, 1, steps,
                                                0, part, 2), steps), []))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == [f"img{i:03d}" for i in range(48)]
  # The next epoch deals the shards out differently but covers it again.
  nxt = [sum(_names(records.names_stream(str(tmp_path), "train", 8, 1, steps, steps,
                                         part, 2), steps), []) for part in (0, 1)]
  assert sorted(nxt[0] + nxt[1]) == sorted(seen[0] + seen[1])
  assert nxt[0] != seen[0]


def test_resumed_stream_continues_with_the_next_unseen_records(tmp_path):
  _write(tmp_path)
  data = sources.DataSource("records", data_dir=str(tmp_path), image_size=8,
                            batch_size=4, seed=2)
  steps = 12
  whole = [b.numpy() for b in data.train_stream(0, steps, 1, 2).take(16)]
  # A run killed after step 9 restarts with start_step = 9 (the checkpointed
  # step): across the epoch end, batch for batch the same.
  resumed = [b.numpy() for b in data.train_stream(9, steps, 1, 2).take(7)]
  for a, b in zip(whole[9:], resumed):
    np.testing.assert_array_equal(a, b)
  names = sum(_names(records.names_stream(str(tmp_path), "train", 4, 2, steps, 0, 1, 2),
                     9), [])
  later = sum(_names(records.names_stream(str(tmp_path), "train", 4, 2, steps, 9, 1, 2),
                     3), [])
  assert not set(names) & set(later)     # still inside epoch 0: all unseen


def test_truncated_shard_and_bad_image_are_reported_and_skipped(tmp_path, caplog):
  _write(tmp_path, num=24, shard_size=6, bad_image_at=2)
  shard = tmp_path / "train" / "shard-00003.tfrecord"
  shard.write_bytes(shard.read_bytes()[:-25])
  with caplog.at_level("WARNING"):
    images = np.concatenate([b.numpy() for b in
                             records.eval_dataset(str(tmp_path), "train", 8, 5)])
  assert "shard-00003.tfrecord" in caplog.text and "truncated" in caplog.text
  # 24 records, one undecodable image, the last record of the cut shard lost.
  assert images.shape == (22, 8, 8, 3)
  data = sources.DataSource("records", data_dir=str(tmp_path), image_size=8,
                            batch_size=4, seed=0)
  assert len([b for b in data.train_stream(0, 5).take(10)]) == 10


def test_writer_resumes_at_the_first_unfinished_shard(tmp_path):
  rng = np.random.default_rng(0)
  writer = records.RecordSplitWriter(tmp_path, "val", 10, 4)
  for i in range(6):                      # killed inside the second shard
    writer.add(i, f"x{i}", _png(rng))
  index = json.loads((tmp_path / "val" / "index.json").read_text())
  assert index["shards"][0]["count"] == 4 and not index["complete"]
  again = records.RecordSplitWriter(tmp_path, "val", 10, 4)
  assert [again.needed(i) for i in (0, 3, 4, 9)] == [False, False, True, True]
  for i in range(4, 10):
    again.add(i, f"x{i}", _png(rng))
  assert again.close() == 10
  assert sorted(p.name for p in (tmp_path / "val").iterdir()) == [
      "index.json", "shard-00000.tfrecord", "shard-00001.tfrecord",
      "shard-00002.tfrecord"]


def test_prepare_synfaces_records_have_ground_truth(tmp_path):
  from tfsym3d.data import prepare, synthetic
  gen = synthetic.SynFaces(image_size=16, seed=0)
  assert prepare.write_synfaces_split(gen, tmp_path, "test", 5, "records", 2,
                                      progress=False) == 5
  assert prepare.write_synfaces_split(gen, tmp_path, "test", 5, "records", 2,
                                      progress=False) == 0
  data = sources.DataSource("records", data_dir=str(tmp_path), image_size=16,
                            batch_size=5)
  assert data.has_ground_truth
  images, depth = next(iter(data.eval_dataset("test")))
  sample = gen.sample(synthetic.split_offset("test") + 3)
  np.testing.assert_allclose(images[3].numpy(), sample["image"] / 127.5 - 1, atol=1e-5)
  np.testing.assert_allclose(depth[3].numpy(), sample["depth"], atol=1e-4)


def test_too_few_shards_for_the_workers_says_what_to_do(tmp_path):
  _write(tmp_path, num=12, shard_size=6)
  with pytest.raises(ValueError, match="smaller --shard_size"):
    records.train_stream(str(tmp_path), "train", 8, 6, 0, 2, 0, 0, 3)
  with pytest.raises(sources.DataNotFoundError, match="--layout=records"):
    sources.DataSource("records", data_dir=str(tmp_path / "none")).check()


def test_prepare_celeba_records_match_the_folder_crops_and_resume(tmp_path):
  from tfsym3d.data import prepare
  import test_prepare_celeba as celeba_fixture
  src = tmp_path / "celeba"
  celeba_fixture._make_release(src, "img_align_celeba")  # pylint: disable=protected-access
  size = celeba_fixture.SIZE
  folder = prepare.prepare_celeba(src, tmp_path / "folder", size=size, fmt="png")
  counts = prepare.prepare_celeba(src, tmp_path / "rec", size=size, fmt="png",
                                  output="records", shard_size=1)
  assert counts["written"] == folder["written"] == 4 and counts["unreadable"] == 1
  again = prepare.prepare_celeba(src, tmp_path / "rec", size=size, fmt="png",
                                 output="records", shard_size=1)
  assert again["written"] == 0 and again["existing"] == 5
  for split in ("train", "val", "test"):
    names = sorted(p.stem for p in (tmp_path / "folder" / split).glob("*.png"))
    got = [] if not names else np.concatenate(
        [b.numpy() for b in records.eval_dataset(str(tmp_path / "rec"), split, size, 8)])
    assert len(got) == len(names)
    for image, name in zip(got, names):
      want = np.asarray(Image.open(tmp_path / "folder" / split / f"{name}.png"))
      np.testing.assert_allclose((image + 1) * 127.5, want, atol=1e-3)


def _photos(root, count, rng):
  root.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    coarse = rng.integers(0, 255, (5, 6, 3), np.uint8)
    Image.fromarray(coarse).resize((60, 50), Image.BILINEAR).save(root / f"p{i:02d}.png")


def test_prepare_folder_records_read_back_like_the_folder_layout(tmp_path):
  from tfsym3d.data import photos, prepare
  src = tmp_path / "src"
  _photos(src, 14, np.random.default_rng(4))
  config = photos.PrepareConfig(mode="folder", image_size=16, crop=40)
  folder = prepare.prepare_own_photos(src, tmp_path / "folder", config, progress=False)
  # Interrupted after 5 photos: no records until every photo is in.
  part = prepare.prepare_own_photos(src, tmp_path / "rec", config, "records",
                                    shard_size=3, max_photos=5, progress=False)
  assert part["pending"] == 9 and part["records"] is None
  assert not list((tmp_path / "rec").glob("*/index.json"))
  assert "not written yet" in photos.format_report(part)
  rec = prepare.prepare_own_photos(src, tmp_path / "rec", config, "records",
                                   shard_size=3, progress=False)
  assert rec["records"] == folder["kept_by_split"]
  assert rec["kept"] == folder["kept"] == 14
  assert (tmp_path / "rec" / photos.REPORT_NAME).is_file()
  assert (tmp_path / "rec" / photos.PREVIEW_NAME).is_file()
  data = sources.DataSource("records", data_dir=str(tmp_path / "rec"), image_size=16,
                            batch_size=4)
  data.check()
  assert data.train_size() == folder["kept_by_split"]["train"]
  for split in photos.SPLITS:
    want = sorted((tmp_path / "folder" / split).glob("*.png"))
    assert want, split                       # every split has a photo here
    got = np.concatenate([b.numpy() for b in data.eval_dataset(split)])
    assert len(got) == len(want)
    for image, path in zip(got, want):
      np.testing.assert_allclose((image + 1) * 127.5, np.asarray(Image.open(path)),
                                 atol=1e-3)
  # A rerun resumes: nothing is rewritten.
  shards = {p: p.stat().st_mtime_ns for p in (tmp_path / "rec").glob("*/shard-*")}
  again = prepare.prepare_own_photos(src, tmp_path / "rec", config, "records",
                                     shard_size=3, progress=False)
  assert again["records"] == rec["records"]
  assert {p: p.stat().st_mtime_ns for p in shards} == shards
  # More photos: the splits' lists change and their records are rewritten.
  _photos(src / "more", 3, np.random.default_rng(5))
  grown = prepare.prepare_own_photos(src, tmp_path / "rec", config, "records",
                                     shard_size=3, progress=False)
  assert sum(grown["records"].values()) == 17
  spec = {"name": tf.io.FixedLenFeature([], tf.string)}
  for split in photos.SPLITS:
    files = records.open_split(str(tmp_path / "rec"), split).files
    names = [tf.io.parse_single_example(r, spec)["name"].numpy().decode()
             for r in tf.data.TFRecordDataset(files)]
    crops = tmp_path / "rec" / prepare.PHOTO_CROPS / split
    assert names == sorted(p.stem for p in crops.glob("*.png")), split


def test_corrupt_record_is_skipped_and_the_next_shard_still_read(tmp_path):
  _write(tmp_path, num=12, shard_size=6)
  shard = tmp_path / "train" / "shard-00000.tfrecord"
  data = bytearray(shard.read_bytes())
  offset = 0
  for _ in range(3):    # past records 0-2: length (8), its CRC (4), data, CRC (4)
    offset += 16 + int.from_bytes(data[offset:offset + 8], "little")
  data[offset + 12 + 20] ^= 0xFF          # a byte inside record 3's data
  shard.write_bytes(bytes(data))          # same size: only the CRC can tell
  images = np.concatenate([b.numpy() for b in
                           records.eval_dataset(str(tmp_path), "train", 8, 5)])
  # Records 0-2 of the damaged shard, then all of the next one.
  assert images.shape == (9, 8, 8, 3)
  data_source = sources.DataSource("records", data_dir=str(tmp_path), image_size=8,
                                   batch_size=2, seed=0)
  assert len([b for b in data_source.train_stream(0, 4).take(8)]) == 8


def test_prepare_folder_cli_writes_records(tmp_path):
  repo = pathlib.Path(__file__).resolve().parents[1]
  src = tmp_path / "src"
  _photos(src, 6, np.random.default_rng(6))
  result = subprocess.run(
      [sys.executable, "-m", "tfsym3d.data.prepare", "folder", f"--src={src}",
       f"--out={tmp_path / 'out'}", "--image_size=16", "--layout=records",
       "--shard_size=2", "--noprogress", "--json"],
      capture_output=True, text=True, cwd=repo, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(repo)))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["records"] == report["kept_by_split"] and report["kept"] == 6
  assert sum(records.split_size(str(tmp_path / "out"), s)
             for s in ("train", "val", "test")) == 6
