"""--strategy: workers' shares of the training stream, TF_CONFIG checks, and
(slow) a 2-worker MultiWorkerMirroredStrategy group on localhost against a
one-process run with the same global batch, chief-only writes and resume."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image

from tfsym3d import train
from tfsym3d.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.cfg")


def _take(dataset, n):
  return [batch.numpy() for batch in dataset.take(n)]


@pytest.mark.parametrize("dataset", ["synfaces", "folder"])
def test_worker_shares_make_up_the_one_process_batch(dataset, tmp_path):
  data_dir = None
  if dataset == "folder":
    data_dir = tmp_path / "faces"
    rng = np.random.default_rng(0)
    (data_dir / "train").mkdir(parents=True)
    for i in range(12):
      Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(
          data_dir / "train" / f"{i:02d}.png")
  data = sources.DataSource(dataset=dataset, data_dir=data_dir and str(data_dir),
                            image_size=16, batch_size=4, seed=3)
  start, steps = 2, 3                # from a resumed step, across an epoch end
  whole = _take(data.train_stream(start, steps), 3)
  halves = [_take(data.train_stream(start, steps, part, 2), 3) for part in (0, 1)]
  for step in range(3):
    assert halves[0][step].shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]),
                                  whole[step])
  with pytest.raises(ValueError, match="batch_size=4"):
    data.train_stream(0, steps, 0, 3)


def test_multi_worker_needs_a_usable_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(app.UsageError, match="needs the TF_CONFIG"):
    train.make_strategy("multi_worker")
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
  with pytest.raises(app.UsageError, match="worker list"):
    train.make_strategy("multi_worker")
  with pytest.raises(app.UsageError, match="--strategy='two'"):
    train.make_strategy("two")


# Runs tfsym3d.train's train() as its main does and saves the final weights.
_TRAIN_AND_SAVE = textwrap.dedent("""
    import sys
    import numpy as np
    from absl import app, flags
    from tfsym3d import flags as tflags, runs, train
    flags.DEFINE_string("weights_out", None, "where to np.savez the final weights")
    FLAGS = flags.FLAGS
    def main(argv):
      strategy = train.make_strategy(FLAGS.strategy)
      config = tflags.model_config()
      data = runs.data_source_from_flags(config.image_size)
      result = train.train(config, tflags.train_config(), data, strategy,
                           train.precision_for(FLAGS.mixed_precision))
      np.savez(FLAGS.weights_out, *result["model"].get_weights())
      print("chief", result["chief"], "steps", result["steps"])
    sys.argv = ["train"] + sys.argv[1:]
    app.run(main)
""")
_COMMON = ["--epochs=1", "--steps_per_epoch=2", "--checkpoint_every=2", "--eval_images=0",
           "--val_images=0", "--images_every=0", "--noprogress", "--lr_schedule=constant",
           # Adam with a larger epsilon: with 1e-8 it amplifies float rounding
           # of near-zero gradients by up to lr / eps (see test_train.py).
           "--adam_epsilon=1e-3"]


def _env(**extra):
  cache = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "tfsym3d-tests-xla-cache"
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
              TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={cache}", **extra)


def _start(run_dir, weights_out, args, **env):
  return subprocess.Popen(
      [sys.executable, "-c", _TRAIN_AND_SAVE, f"--flagfile={TINY}", f"--run_dir={run_dir}",
       f"--weights_out={weights_out}"] + _COMMON + list(args),
      env=_env(**env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_group(run_dir, out_dir, args=()):
  workers = [f"localhost:{port}" for port in _free_ports(2)]
  return [_start(run_dir, out_dir / f"worker{i}.npz", ["--strategy=multi_worker"] + list(args),
                 TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": i}}))
          for i in range(2)]


def _finish(processes, timeout=900):
  outputs = []
  try:
    for p in processes:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, err[-3000:]
      outputs.append((out, err))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  return outputs


def _weights(path):
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def _max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.slow
def test_two_workers_equal_one_process_write_once_and_resume(tmp_path):
  run, out = tmp_path / "run", tmp_path / "out"
  out.mkdir()
  # The one-process reference (same flags, same global batch of 8) runs
  # beside the first worker group.
  single = _start(tmp_path / "single", out / "single.npz", ["--strategy=one_device"])
  group = _start_group(run, out)
  (out0, err0), (out1, err1) = _finish(group)
  _finish([single])
  w0, w1 = _weights(out / "worker0.npz"), _weights(out / "worker1.npz")
  reference = _weights(out / "single.npz")
  worker_diff, single_diff = _max_diff(w0, w1), _max_diff(w0, reference)
  print(f"2 steps: worker0 vs worker1 max diff {worker_diff:.3g}; workers vs one "
        f"process {single_diff:.3g}")
  assert "chief True steps 2" in out0
  assert worker_diff == 0.0
  assert single_diff <= 1e-5
  # Only the chief wrote into the run directory; the other worker's
  # directory is gone.
  assert "chief False steps 2" in out1
  own = re.search(r"checkpoints and summaries go to (\S+) \(deleted", err1).group(1)
  assert not pathlib.Path(own).exists()
  assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
  assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-2")
  assert "not the chief" not in err0

  # A new group on the same run directory resumes from the chief's step 2.
  group = _start_group(run, out, ["--epochs=2"])
  (_, err0), (_, err1) = _finish(group)
  for err in (err0, err1):
    assert re.search(r"resumed from \S+ckpt-2 \(step 2\)", err), err[-2000:]
  assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-4")
  w0, w1 = _weights(out / "worker0.npz"), _weights(out / "worker1.npz")
  assert _max_diff(w0, w1) == 0.0
  assert _max_diff(w0, reference) > 1e-4     # two more steps moved them


def test_workers_that_resume_from_different_steps_stop_with_a_clear_error(tmp_path):
  """Worker 1 cannot see the chief's checkpoint (a run directory that is not
  shared): both workers stop before training, saying why."""
  from tfsym3d import runs
  from tfsym3d.config import ModelConfig
  tiny = ModelConfig(image_size=32, nf=8, zdim=32, nf_encoder=8, nf_conf=8,
                     zdim_conf=16, vgg_weights="none", lam_perc=0.0)
  chief_dir = tmp_path / "chief"
  step = tf.Variable(2, dtype=tf.int64)
  tf.train.CheckpointManager(runs.checkpoint_for(runs.build_model(tiny), step=step),
                             str(chief_dir / "ckpt"), max_to_keep=1).save(2)
  workers = [f"localhost:{port}" for port in _free_ports(2)]
  group = [_start(run_dir, tmp_path / f"w{i}.npz", ["--strategy=multi_worker", "--epochs=2"],
                  TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": i}}))
           for i, run_dir in enumerate([chief_dir, tmp_path / "elsewhere"])]
  for p in group:
    try:
      _, err = p.communicate(timeout=300)
    finally:
      if p.poll() is None:
        p.kill()
    assert p.returncode != 0
    assert "the workers resumed from different steps (0 to 2)" in err, err[-2000:]
