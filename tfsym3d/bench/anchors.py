"""Speed anchors: the reference's PyTorch code timed in the same run as ours,
so the ratio holds on any machine (absolute figures do not carry over from
one CPU to another). torch is imported only when an anchor is measured;
without it the anchor is "not measured" (install the `test` extra)."""

import importlib.util
import time
from typing import Callable, Dict, Optional, Union

NOT_MEASURED = "not measured (torch is not installed; pip install tfsym3d[test])"


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def ratio(ours: Optional[float], anchor: Union[float, str, None]) -> Optional[float]:
  """ours / anchor when both are numbers, else None (an anchor not measured)."""
  if isinstance(anchor, (int, float)) and isinstance(ours, (int, float)) and anchor > 0:
    return ours / anchor
  return None


def describe(anchor: Union[Dict, str, None], measured: Callable[[Dict], str],
             label: str) -> Optional[str]:
  """A table's anchor line(s): `measured(anchor)` when the anchor was timed
  (a dict), "<label>: <why not>" when it was not (a string), None without one."""
  if isinstance(anchor, dict):
    return measured(anchor)
  if anchor:
    return f"{label}: {anchor}"
  return None


def time_calls(call: Callable[[], object], repeats: int, warmup: int) -> list:
  """Seconds of `repeats` calls after `warmup` untimed ones (at least one)."""
  for _ in range(max(int(warmup), 1)):
    call()
  times = []
  for _ in range(max(int(repeats), 1)):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return times


def torch_train_step(batch_size: int, image_size: int, nf: int, zdim: int, nf_encoder: int,
                     nf_conf: int, zdim_conf: int, perceptual: bool, steps: int,
                     warmup: int, seed: int = 0) -> Union[Dict, str]:
  """Images per second of `torch_reference.ReferenceTrainStep` (all cores),
  or NOT_MEASURED."""
  if not torch_available():
    return NOT_MEASURED
  import statistics  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from tfsym3d.bench import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  step = torch_reference.ReferenceTrainStep(image_size, nf, zdim, nf_encoder, nf_conf,
                                            zdim_conf, perceptual)
  images = torch.rand(batch_size, 3, image_size, image_size) * 2 - 1
  times = time_calls(lambda: step(images), steps, warmup)
  return {"images_per_s": batch_size / statistics.median(times),
          "step_ms": statistics.median(times) * 1000.0, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "perceptual_loss": perceptual,
          "what": "the reference's five networks, losses (perceptual included) and Adam; "
                  "rasterization replaced by an identity warp (a lower bound)"}


def torch_inference_ms(image_size: int, nf: int, zdim: int, nf_encoder: int, threads,
                       repeats: int, warmup: int, seed: int = 0) -> Union[Dict, str]:
  """{ms_1thread, ms_2threads, ...}: per-image latency (batch 1) of the
  reference's netD, netA, netL, netV, or NOT_MEASURED."""
  if not torch_available():
    return NOT_MEASURED
  import statistics  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from tfsym3d.bench import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  infer = torch_reference.inference_networks(image_size, nf, zdim, nf_encoder)
  image = torch.rand(1, 3, image_size, image_size) * 2 - 1
  before = torch.get_num_threads()
  entry = {"torch": torch.__version__}
  try:
    for n in threads:
      torch.set_num_threads(n)
      times = time_calls(lambda: infer(image), repeats, warmup)
      entry["ms_1thread" if n == 1 else f"ms_{n}threads"] = statistics.median(times) * 1e3
  finally:
    torch.set_num_threads(before)
  return entry


class _FolderImages:
  """A reference-style map dataset: PIL decode, resize to S x S (bilinear),
  random horizontal flip, [3, S, S] float in [0, 1]. Module level so worker
  processes can pickle it."""

  def __init__(self, paths, image_size, seed):
    self.paths, self.image_size, self.seed = list(paths), image_size, seed

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(self.paths[index]) as im:
      im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
      array = np.asarray(im, np.float32) / 255.0
    if np.random.default_rng((self.seed, index)).random() < 0.5:
      array = array[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def torch_folder_loader(paths, image_size: int, batch_size: int, repeats: int,
                        warmup: int, workers: int, seed: int = 0) -> Union[Dict, str]:
  """Images per second of a reference-style loader (PIL in `workers` worker
  processes, torch DataLoader, shuffled, last partial batch dropped) over
  `paths`: median of `repeats` epochs after `warmup` untimed ones."""
  if not torch_available():
    return NOT_MEASURED
  import statistics  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  loader = torch.utils.data.DataLoader(
      _FolderImages(paths, image_size, seed), batch_size=batch_size, shuffle=True,
      drop_last=True, num_workers=workers, generator=generator,
      persistent_workers=workers > 0)
  counts = []

  def epoch():
    counts.append(sum(int(batch.shape[0]) for batch in loader))

  times = time_calls(epoch, repeats, warmup)
  return {"images_per_s": counts[-1] / statistics.median(times), "epoch_s": times,
          "workers": workers, "torch": torch.__version__,
          "what": "PIL decode + resize + flip in torch DataLoader worker processes"}
