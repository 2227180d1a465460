"""DataSource: the training stream is a function of the step; clear errors."""

import numpy as np
import pytest

from tfsym3d.data import sources


def test_synfaces_stream_resumes_with_the_same_batches():
  data = sources.DataSource("synfaces", image_size=16, batch_size=3, seed=5)
  whole = [b.numpy() for b in data.train_stream(0).take(4)]
  resumed = [b.numpy() for b in data.train_stream(2).take(2)]
  np.testing.assert_array_equal(resumed[0], whole[2])
  np.testing.assert_array_equal(resumed[1], whole[3])
  assert whole[0].shape == (3, 16, 16, 3) and -1 <= whole[0].min() < whole[0].max() <= 1
  # Some images are mirrored (p = 0.5 by index), and the same sample unflipped
  # is what the held-out stream (no flips) would show at the same index.
  assert not np.array_equal(whole[0], whole[1])


def test_synfaces_eval_has_ground_truth_and_no_flips():
  data = sources.DataSource("synfaces", image_size=16, batch_size=4, seed=5)
  images, depth = next(iter(data.eval_dataset("val", 6)))
  assert images.shape == (4, 16, 16, 3) and depth.shape == (4, 16, 16)
  again = next(iter(data.eval_dataset("val", 6)))[0]
  np.testing.assert_array_equal(images.numpy(), again.numpy())
  assert sum(b[0].shape[0] for b in data.eval_dataset("val", 6)) == 6


@pytest.mark.parametrize("text, crop", [(None, None), ("", None), ("none", None),
                                        ("170", 170), ("1, 2, 30, 40", (1, 2, 30, 40))])
def test_parse_crop(text, crop):
  assert sources.parse_crop(text) == crop


def test_bad_crop_and_missing_data_say_what_to_do(tmp_path):
  with pytest.raises(ValueError, match="--crop='1,2'"):
    sources.parse_crop("1,2")
  with pytest.raises(sources.DataNotFoundError, match="prepare celeba"):
    sources.DataSource("folder", data_dir=str(tmp_path / "x")).check()
  with pytest.raises(sources.DataNotFoundError, match="needs --data_dir"):
    sources.DataSource("paired").check()
  (tmp_path / "train").mkdir()
  with pytest.raises(sources.DataNotFoundError, match="prepare synfaces"):
    sources.DataSource("paired", data_dir=str(tmp_path)).check(("train", "val"))


def test_pixel_limit_reaches_the_folder_readers(tmp_path):
  from PIL import Image
  for split in ("train", "test"):
    (tmp_path / split).mkdir()
    for i in range(3):
      Image.new("RGB", (20, 20), (40 * i, 90, 120)).save(tmp_path / split / f"s{i}.png")
    Image.new("RGB", (60, 50), (200, 90, 120)).save(tmp_path / split / "big.png")

  def images_seen(limit):
    data = sources.DataSource("folder", data_dir=str(tmp_path), image_size=8,
                              batch_size=2, max_image_pixels=limit)
    return sum(int(b.shape[0]) for b in data.eval_dataset("test"))

  # 60 x 50 = 3,000 pixels: over a 1,000-pixel limit, within the default.
  assert images_seen(None) == 4
  assert images_seen(1000) == 3
  assert images_seen(0) == 4
