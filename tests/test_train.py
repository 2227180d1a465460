"""Training and evaluation end to end on configs/tiny.cfg, in subprocesses:
train, checkpoint, resume (also after SIGKILL, and after a kill while a
checkpoint is being written), evaluate with its test-mode dump; the
non-finite guard; MirroredStrategy over 2 devices vs one device."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.cfg")
# configs/tiny.cfg runs the renderer without XLA; the subprocesses that do
# compile its stages (the MirroredStrategy comparison builds a default
# model) share XLA's persistent compilation cache, as the programs are
# the same every time.
XLA_CACHE = pathlib.Path(tempfile.gettempdir()) / "tfsym3d-tests-xla-cache"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
           TF_XLA_FLAGS=(os.environ.get("TF_XLA_FLAGS", "") +
                         f" --tf_xla_persistent_cache_directory={XLA_CACHE}").strip())


def _run(args, timeout=600, check=True):
  result = subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def _latest_step(run_dir) -> int:
  latest = tf.train.latest_checkpoint(str(pathlib.Path(run_dir) / "ckpt"))
  return -1 if latest is None else int(latest.rsplit("-", 1)[1])


def _restored_step(stderr: str) -> int:
  for line in stderr.splitlines():
    if "resumed from" in line:
      return int(line.rsplit("(step ", 1)[1].rstrip(")"))
  return -1


def _scalars(log_dir, tag):
  """(step, value) of a TensorBoard scalar over every event file of log_dir."""
  values = []
  for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == tag:
          values.append((event.step, float(tf.make_ndarray(value.tensor))))
  return values


def test_tiny_train_resume_and_evaluate(tmp_path):
  run = tmp_path / "run"
  first = _run(["tfsym3d.train", f"--flagfile={TINY}", f"--run_dir={run}", "--epochs=1",
                "--eval_images=0", "--intra_op_threads=1"])
  assert _latest_step(run) == 6
  assert "intra-op threads 1" in first.stderr
  assert (run / "flags.txt").read_text().count("--image_size=32") == 1
  assert list((run / "tb").glob("events.out.tfevents.*"))
  assert list((run / "images").glob("step0000006.png"))
  assert list((run / "images").glob("step0000006_yaw.gif"))
  assert "resumed" not in first.stderr
  # Validation over the whole set each epoch, with SIDE and MAD (synfaces has
  # ground truth).
  line = [l for l in first.stderr.splitlines() if "validation:" in l][-1]
  assert "epoch 1 (step 6)" in line and " side " in line and " mad " in line

  # The checkpoint holds the networks' weights, not just the step.
  keys = [k for k, _ in tf.train.list_variables(str(run / "ckpt" / "ckpt-6"))]
  assert any("netD" in k and "kernel" in k for k in keys)
  assert any("optimizer" in k for k in keys)
  # Same run dir, one more epoch: resumes at step 6 and ends at 12, then
  # evaluates on held-out synfaces with the test-mode dump.
  # (With a depth smoothness schedule: the resumed second epoch, the last,
  # trains with the final weight, as TensorBoard shows.)
  second = _run(["tfsym3d.train", f"--flagfile={TINY}", f"--run_dir={run}",
                 "--epochs=2", "--dump_images=2", "--lam_depth_sm=0.5",
                 "--lam_depth_sm_final=0.125"])
  assert _restored_step(second.stderr) == 6
  assert _latest_step(run) == 12
  assert "intra-op threads all cores" in second.stderr
  weights = _scalars(run / "tb", "train/lam_depth_sm")
  assert weights and all(w == 0.125 for step, w in weights if step > 6), weights
  assert "constant null depth" in second.stdout and "average GT depth" in second.stdout
  assert (run / "eval" / "test" / "dump" / "000001_albedo.png").exists()
  # The summary on disk has the run's steps: tfsym3d.compare reads them.
  from tfsym3d import compare
  row = compare.run_row(str(run))
  assert (row["steps"], row["images"], row["weights"]) == (12, 12 * 8, "raw")

  result = _run(["tfsym3d.evaluate", f"--flagfile={TINY}", f"--checkpoint={run}",
                 "--eval_images=16", "--json", "--dump_images=1",
                 f"--eval_dir={tmp_path / 'eval'}"])
  summary = json.loads(result.stdout)
  assert summary["num_images"] == 16 and summary["checkpoint"].endswith("ckpt-12")
  for key in ("side", "mad"):
    assert np.isfinite(summary[key]["mean"]) and summary[key]["std"] >= 0
  for name in ("const_null", "avg_gt"):
    assert summary["baselines"][name]["side"] > 0 and summary["baselines"][name]["mad"] > 0
  rows = (tmp_path / "eval" / "per_image.csv").read_text().strip().splitlines()
  assert len(rows) == 17 and rows[0].startswith("index,side,mad")
  dump = tmp_path / "eval" / "dump"
  for panel in ("input", "albedo", "canonical_image", "reconstruction",
                "reconstruction_flip", "canonical_depth", "canonical_normal",
                "confidence", "confidence_flip"):
    assert (dump / f"000000_{panel}.png").exists(), panel
  factors = (dump / "000000_factors.txt").read_text()
  assert "ambient" in factors and "rot_y_rad" in factors


def _start(run_dir, extra=(), wrapper=None):
  args = [f"--flagfile={TINY}", f"--run_dir={run_dir}", "--epochs=3",
          "--checkpoint_every=2", "--eval_images=0", "--val_images=0",
          "--images_every=0"] + list(extra)
  if wrapper:
    command = [sys.executable, "-c", wrapper] + args
  else:
    command = [sys.executable, "-m", "tfsym3d.train"] + args
  return subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, process, timeout=400):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    if process.poll() is not None:
      raise AssertionError("training ended early: " + process.stderr.read()[-2000:])
    time.sleep(0.2)
  process.kill()
  raise AssertionError("timed out")


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(tmp_path):
  run = tmp_path / "run"
  process = _start(run)
  _wait_for(lambda: _latest_step(run) >= 8, process)  # mid-epoch 2 (6 steps each)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = _latest_step(run)
  assert saved >= 8
  resumed = _run(["tfsym3d.train", f"--flagfile={TINY}", f"--run_dir={run}",
                  "--epochs=3", "--checkpoint_every=2", "--eval_images=0",
                  "--val_images=0", "--images_every=0"])
  # Lost at most one checkpoint interval: it restarts from the newest save.
  assert _restored_step(resumed.stderr) == saved
  assert _latest_step(run) == 18


# Runs tfsym3d.train with the checkpoint state update made slow: the data of
# checkpoint 8 is on disk but not yet recorded when the test kills the run.
_SLOW_STATE_WRITE = textwrap.dedent("""
    import sys, time, pathlib
    from tensorflow.python.checkpoint import checkpoint_management as cm
    real = cm.update_checkpoint_state_internal
    def slow(save_dir, model_checkpoint_path, *args, **kwargs):
      if model_checkpoint_path.endswith("ckpt-8"):
        pathlib.Path(save_dir, "WRITING").write_text(model_checkpoint_path)
        time.sleep(600)
      return real(save_dir, model_checkpoint_path, *args, **kwargs)
    cm.update_checkpoint_state_internal = slow
    from absl import app
    from tfsym3d import train
    sys.argv = ["tfsym3d.train"] + sys.argv[1:]
    app.run(train.main)
""")


def test_kill_while_writing_a_checkpoint_never_loads_it(tmp_path):
  run = tmp_path / "run"
  process = _start(run, wrapper=_SLOW_STATE_WRITE)
  _wait_for(lambda: (run / "ckpt" / "WRITING").exists(), process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert list((run / "ckpt").glob("ckpt-8.*"))    # the half-done save is there
  assert _latest_step(run) == 6                    # but not recorded
  # Damage the newest recorded one too: a checkpoint that fails to load is
  # reported and the previous one is used.
  for f in (run / "ckpt").glob("ckpt-6.data*"):
    f.write_bytes(b"")
  resumed = _run(["tfsym3d.train", f"--flagfile={TINY}", f"--run_dir={run}",
                  "--epochs=3", "--checkpoint_every=2", "--eval_images=0",
                  "--val_images=0", "--images_every=0"])
  assert "ckpt-6 is unreadable" in resumed.stderr
  assert _restored_step(resumed.stderr) == 4
  assert _latest_step(run) == 18


def test_missing_dataset_fails_at_once_saying_how_to_prepare(tmp_path):
  result = _run(["tfsym3d.train", f"--flagfile={REPO / 'configs' / 'faces.cfg'}",
                 f"--data_dir={tmp_path / 'nope'}", f"--run_dir={tmp_path / 'run'}"],
                timeout=120, check=False)
  assert result.returncode != 0
  assert "tfsym3d.data.prepare celeba" in result.stderr
  assert str(tmp_path / "nope") in result.stderr
  assert not (tmp_path / "run").exists()
  # A schedule for a term that is off is a usage error, before anything runs.
  result = _run(["tfsym3d.train", f"--flagfile={TINY}", "--lam_depth_sm_final=0.5",
                 f"--run_dir={tmp_path / 'run'}"], timeout=120, check=False)
  assert result.returncode != 0 and "--lam_depth_sm > 0" in result.stderr
  assert not (tmp_path / "run").exists()


def test_depth_smoothness_weight_moves_linearly_from_first_to_last_epoch():
  from tfsym3d.train import depth_smoothness_weight
  weights = [depth_smoothness_weight(e, 5, 3.0, 1.0) for e in range(5)]
  np.testing.assert_allclose(weights, [3.0, 2.5, 2.0, 1.5, 1.0])
  assert depth_smoothness_weight(9, 5, 3.0, 1.0) == 1.0      # past the end: final
  assert depth_smoothness_weight(2, 5, 3.0, None) == 3.0     # no schedule
  assert depth_smoothness_weight(0, 1, 3.0, 1.0) == 3.0      # one epoch: the first


def test_learning_rate_warms_up_then_follows_its_schedule():
  from tfsym3d.config import ModelConfig, TrainConfig
  from tfsym3d.train import learning_rate
  config = ModelConfig(learning_rate=1e-3)
  cosine = TrainConfig(lr_schedule="cosine", lr_final_fraction=0.1, lr_warmup_steps=100)
  schedule = learning_rate(config, cosine, 1100)
  rates = [float(schedule(step)) for step in (0, 50, 100, 600, 1100, 5000)]
  # Linear from 0 to 1e-3 over 100 steps, then half-way down the cosine
  # (to 1e-4) after 500 more, and its floor at the end and after.
  np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-5, atol=1e-9)
  constant = learning_rate(config, cosine.replace(lr_schedule="constant"), 1100)
  np.testing.assert_allclose([float(constant(s)) for s in (25, 100, 1000)],
                             [2.5e-4, 1e-3, 1e-3], rtol=1e-5)
  no_warmup = learning_rate(config, cosine.replace(lr_warmup_steps=0), 1100)
  np.testing.assert_allclose(float(no_warmup(0)), 1e-3, rtol=1e-6)
  with pytest.raises(ValueError, match="--lr_warmup_steps"):
    learning_rate(config, cosine.replace(lr_warmup_steps=1100), 1100)
  with pytest.raises(ValueError, match="--lr_warmup_steps"):
    TrainConfig(lr_warmup_steps=-1)


def test_fit_phases_finish_a_started_epoch_then_run_whole_epochs():
  from tfsym3d.train import fit_phases
  assert fit_phases(0, 6, 2) == [(0, 2, 6)]                  # a fresh run: one call
  assert fit_phases(8, 6, 3) == [(1, 2, 4), (2, 3, 6)]       # resumed in epoch 1
  assert fit_phases(10, 6, 2) == [(1, 2, 2)]                 # ... its last epoch
  assert fit_phases(6, 6, 2) == [(1, 2, 6)]                  # at an epoch boundary


_MIRRORED = textwrap.dedent("""
    import keras, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfsym3d.config import ModelConfig
    from tfsym3d.model import Unsup3D, make_optimizer
    config = ModelConfig(image_size=32, nf=8, zdim=32, nf_encoder=8, nf_conf=8,
                         zdim_conf=16, vgg_weights="none", lam_perc=0.0,
                         learning_rate=1e-3)
    keras.utils.set_random_seed(0)     # a failure reproduces
    images = tf.random.stateless_uniform([8, 32, 32, 3], [1, 2], -1, 1)
    def adam():
      # Our optimiser, with a larger epsilon: Adam's step lr * m / (sqrt(v) + eps)
      # amplifies a gradient difference d by up to lr / eps, i.e. 1e5 with the
      # training epsilon of 1e-8, so float rounding in the replica sum of a
      # near-zero gradient would decide the comparison. With 1e-3 the factor is
      # at most 1 and any real disagreement still shows.
      optimizer = make_optimizer(config)
      optimizer.epsilon = 1e-3
      return optimizer
    def one_step(strategy, optimizer, weights=None):
      with strategy.scope():
        model = Unsup3D(config)
        model.build((None, 32, 32, 3))
        if weights is not None:
          model.set_weights(weights)
        model.compile(optimizer=optimizer())
      before = model.get_weights()
      model.fit(tf.data.Dataset.from_tensors(images), epochs=1, verbose=0)
      assert int(model.optimizer.iterations.numpy()) == 1
      return before, model.get_weights()
    one = lambda: tf.distribute.OneDeviceStrategy("/cpu:0")
    two = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # One step of our Adam from the same weights. With epsilon 1e-3 its step
    # lr * g / (|g| + eps) is proportional to g wherever |g| << eps (most
    # weights at initialisation), so a mis-scaled replica sum shows, as do
    # the optimiser's state and the L2 decay. A second step is not compared:
    # the tiny first-step differences can flip a triangle's visibility, after
    # which the gradients legitimately differ.
    for name, optimizer in (("adam", adam),):
      start, single = one_step(one(), optimizer)
      _, mirrored = one_step(two(), optimizer, start)
      moved = max(float(np.abs(a - b).max()) for a, b in zip(single, start))
      diff = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
      print(name, "moved", moved, "diff", diff)
""")


def test_mirrored_two_devices_step_equals_one_device():
  result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()[-1:]
  assert [line.split()[0] for line in lines] == ["adam"]
  for line in lines:
    name, _, moved, _, diff = line.split()
    assert float(moved) > 1e-4, line     # the step did change the weights
    assert float(diff) <= 1e-5, line


def test_nonfinite_steps_are_skipped_and_a_streak_stops_the_run(tmp_path):
  import keras
  from tfsym3d import runs, train
  from tfsym3d.config import ModelConfig
  from tfsym3d.model import Unsup3D, make_optimizer
  config = ModelConfig(image_size=16, nf=4, zdim=8, nf_encoder=4, nf_conf=4,
                       zdim_conf=8, vgg_weights="none", lam_perc=0.0)
  model = Unsup3D(config)
  model.build((None, 16, 16, 3))
  optimizer = make_optimizer(config)
  model.compile(optimizer=optimizer)
  from tfsym3d import step as step_lib
  model.keep_weight_average(step_lib.WeightAverage(runs.trainable_weight_dict(model), 0.9))
  good = tf.random.stateless_uniform([2, 16, 16, 3], [3, 4], -1, 1)
  bad = tf.tensor_scatter_nd_update(good, [[0, 5, 5, 0]], [float("nan")])
  # Two good steps (checkpointed), then only bad ones.
  data = tf.data.Dataset.from_tensor_slices(tf.stack([good, good] + [bad] * 8))
  step = tf.Variable(0, dtype=tf.int64)
  manager = tf.train.CheckpointManager(
      runs.checkpoint_for(model, optimizer=optimizer, step=step),
      str(tmp_path), max_to_keep=5)
  guard = train.NonFiniteGuard(step, max_streak=3)
  weights = {}
  class Snapshot(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      weights[int(step.numpy())] = [w.copy() for w in self.model.get_weights()]
  model.fit(data, epochs=1, verbose=0, callbacks=[
      train.StepCounter(step), guard, train.CheckpointSaver(manager, step, 1), Snapshot()])
  # Stopped after the third bad step in a row, with a message that says so.
  assert int(step.numpy()) == 5 and "3 non-finite steps in a row" in guard.reason
  assert int(model.skipped_steps.numpy()) == 3
  # Bad steps changed nothing; only the good steps were checkpointed.
  for later in (3, 4, 5):
    for a, b in zip(weights[2], weights[later]):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(weights[1][0], weights[2][0])
  assert manager.latest_checkpoint.endswith("ckpt-2")
  assert int(optimizer.iterations.numpy()) == 2
  # The weight average moved with the good steps only.
  assert int(model.weight_average.updates.numpy()) == 2


def test_init_from_loads_weights_only(tmp_path):
  from tfsym3d import runs
  from tfsym3d.config import ModelConfig
  config = ModelConfig(image_size=16, nf=4, zdim=8, nf_encoder=4, nf_conf=4,
                       zdim_conf=8, vgg_weights="none", lam_perc=0.0)
  source = runs.build_model(config)
  step = tf.Variable(7, dtype=tf.int64)
  manager = tf.train.CheckpointManager(runs.checkpoint_for(source, step=step),
                                       str(tmp_path / "ckpt"), max_to_keep=1)
  manager.save(checkpoint_number=7)
  target = runs.build_model(config)
  assert not np.array_equal(target.get_weights()[0], source.get_weights()[0])
  prefix = runs.restore_weights(target, str(tmp_path))   # a run directory
  assert prefix.endswith("ckpt-7")
  for a, b in zip(source.get_weights(), target.get_weights()):
    np.testing.assert_array_equal(a, b)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    runs.restore_weights(target, str(empty))


def test_a_run_given_alone_brings_its_flags(tmp_path):
  from tfsym3d import runs
  run = tmp_path / "run"
  (run / "ckpt").mkdir(parents=True)
  (run / "flags.txt").write_text("--nf=4\n")
  flag = f"--flagfile={run / 'flags.txt'}"
  # The run directory, its ckpt/ directory or a prefix in it; either spelling.
  for given in (["--model", str(run)], [f"--model={run / 'ckpt'}"],
                [f"--model={run / 'ckpt' / 'ckpt-3'}", "--nf=8"]):
    assert runs.argv_with_run_flagfile(["prog"] + given, "model") == ["prog", flag] + given
  # An explicit flagfile wins; a path with no flags.txt near it is left alone.
  argv = ["prog", "--flagfile=x.cfg", f"--model={run}"]
  assert runs.argv_with_run_flagfile(argv, "model") == argv
  assert runs.argv_with_run_flagfile(["prog", f"--model={tmp_path}"], "model") == \
      ["prog", f"--model={tmp_path}"]
  assert runs.argv_with_run_flagfile(["prog", f"--checkpoint={run}"], "model") == \
      ["prog", f"--checkpoint={run}"]


def test_train_in_process_reads_configs_not_flags(tmp_path):
  """`train.train` runs from two configs alone (no flags parsed): the step
  count, the epochs it was given (not --epochs) and the config's learning
  rate are what the run uses."""
  from tfsym3d import train as train_lib
  from tfsym3d.config import ModelConfig, TrainConfig
  from tfsym3d.data import sources
  config = ModelConfig(image_size=16, nf=4, zdim=8, nf_encoder=4, nf_conf=4, zdim_conf=4,
                       vgg_weights="none", lam_perc=0.0, renderer_xla=False,
                       learning_rate=3e-4, lam_depth_sm=0.1)
  train_config = TrainConfig(run_dir=str(tmp_path / "run"), epochs=2, steps_per_epoch=2,
                             checkpoint_every=0, val_images=0, images_every=0,
                             log_every=0, progress=False, lam_depth_sm_final=0.3)
  data = sources.DataSource(dataset="synfaces", image_size=16, batch_size=2)
  result = train_lib.train(config, train_config, data,
                           tf.distribute.OneDeviceStrategy("/cpu:0"))
  assert (result["steps"], result["epochs"], result["steps_per_epoch"]) == (4, 2, 2)
  model = result["model"]
  assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(3e-4)
  # The depth smoothness schedule ends at the final weight in epoch 2 of 2.
  assert float(model.lam_depth_sm.numpy()) == pytest.approx(0.3)
  assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith("ckpt-4")
  assert not (tmp_path / "run" / "flags.txt").exists()   # no flagfile text given


def test_weight_average_follows_its_formula():
  from tfsym3d import step as step_lib
  weight = tf.Variable([2.0, -4.0])
  average = step_lib.WeightAverage({"w": weight}, decay=0.9)
  expected = weight.numpy().copy()
  for n, value in enumerate([[4.0, 0.0], [0.0, 8.0], [1.0, 1.0], [5.0, 5.0]]):
    weight.assign(value)
    average.update()
    d = min(0.9, (1 + n) / (10 + n))     # the warm-up: 0.1, 0.18, 0.25, 0.31
    expected = d * expected + (1 - d) * np.array(value)
    np.testing.assert_allclose(average.averaged["w"].numpy(), expected, rtol=1e-6)
  assert int(average.updates.numpy()) == 4
  average.copy_to_weights()
  np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="weight_average_decay"):
    step_lib.WeightAverage({"w": weight}, decay=1.0)


def test_weight_average_warmup_caps_the_decay_of_short_runs():
  """The warm-up, not --weight_average_decay, sets the span of a run shorter
  than its crossing: two decays above the ramp's last value average the
  same; the shortfall message says so with the decay reached."""
  from tfsym3d import step as step_lib
  for decay in (0.9, 0.999, 0.9995):
    n = step_lib.weight_average_warmup_updates(decay)
    assert step_lib.weight_average_decay_at(decay, n) == pytest.approx(decay)
    assert step_lib.weight_average_decay_at(decay, n - 1) < decay
  assert step_lib.weight_average_warmup_updates(0.999) == 8990
  assert step_lib.weight_average_shortfall(0.999, 10_000) is None
  note = step_lib.weight_average_shortfall(0.9995, 6_800)
  assert "--weight_average_decay=0.9995" in note and "17,990" in note
  assert "0.99868" in note and "757 steps" in note     # (1 + 6799) / (10 + 6799)
  # Through the real update: 0.95 and 0.99 give the same average over 60
  # updates (the ramp stays below 0.87), 0.5 does not.
  rng = np.random.default_rng(0)
  values = rng.normal(size=(60, 3)).astype(np.float32)
  finals = {}
  for decay in (0.95, 0.99, 0.5):
    weight = tf.Variable(values[0])
    average = step_lib.WeightAverage({"w": weight}, decay=decay)
    for value in values:
      weight.assign(value)
      average.update()
    finals[decay] = average.averaged["w"].numpy()
    assert (step_lib.weight_average_shortfall(decay, 60) is None) == (decay == 0.5)
  np.testing.assert_array_equal(finals[0.95], finals[0.99])
  assert np.abs(finals[0.95] - finals[0.5]).max() > 0.05


def test_weight_average_is_checkpointed_evaluated_and_resumed(tmp_path):
  """A run with --weight_average_decay: its checkpoints hold raw and averaged
  weights; restore_weights reads the average (what evaluation and export
  see); a resumed run continues from the raw weights and the restored
  average; a run without the average restores raw weights."""
  from tfsym3d import runs, train as train_lib
  from tfsym3d.config import ModelConfig, TrainConfig
  from tfsym3d.data import sources
  config = ModelConfig(image_size=16, nf=4, zdim=8, nf_encoder=4, nf_conf=4, zdim_conf=4,
                       vgg_weights="none", lam_perc=0.0, renderer_xla=False,
                       learning_rate=1e-3)
  run_dir = str(tmp_path / "run")
  data = sources.DataSource(dataset="synfaces", image_size=16, batch_size=2)

  def run(epochs):
    tc = TrainConfig(run_dir=run_dir, epochs=epochs, steps_per_epoch=3,
                     checkpoint_every=0, val_images=0, images_every=0, log_every=0,
                     progress=False, weight_average_decay=0.5)
    return train_lib.train(config, tc, data, tf.distribute.OneDeviceStrategy("/cpu:0"))

  first = run(epochs=1)["model"]
  prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
  assert runs.has_weight_average(prefix)
  reader = tf.train.load_checkpoint(prefix)
  key = "netD/network_0/kernel"
  raw = reader.get_tensor(f"weights/{key.replace('/', '.S')}/.ATTRIBUTES/VARIABLE_VALUE")
  mean = reader.get_tensor(
      f"averaged_weights/{key.replace('/', '.S')}/.ATTRIBUTES/VARIABLE_VALUE")
  assert np.abs(raw - mean).max() > 1e-6          # they differ after 3 steps
  # The finished run's model holds the average.
  np.testing.assert_array_equal(runs.weight_dict(first)[key].numpy(), mean)
  averaged_model, raw_model = runs.build_model(config), runs.build_model(config)
  runs.restore_weights(averaged_model, prefix)
  runs.restore_weights(raw_model, prefix, averaged=False)
  np.testing.assert_array_equal(runs.weight_dict(averaged_model)[key].numpy(), mean)
  np.testing.assert_array_equal(runs.weight_dict(raw_model)[key].numpy(), raw)

  # Resuming for a second epoch: 3 more averaged updates, 6 in all.
  second = run(epochs=2)
  assert second["steps"] == 6
  prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
  assert int(tf.train.load_checkpoint(prefix).get_tensor(
      "average_updates/.ATTRIBUTES/VARIABLE_VALUE")) == 6
