"""How one training step turns gradients into an update (docs/method.md §6).

`Unsup3D.train_step` reads as the method: forward, losses, gradients, apply.
Everything about *applying* lives here, in `GuardedUpdate`:

  - replica scaling: Keras' `fit` sums the replicas' gradients, so the loss
    each replica differentiates is divided by the number of replicas;
  - classic L2 weight decay (docs/method.md §6): `weight_decay * w` added to
    every gradient before Adam, not decoupled as in AdamW;
  - the loss-scale policy of a `keras.optimizers.LossScaleOptimizer`
    (mixed_float16): the loss is multiplied by the dynamic scale before
    differentiation, gradients divided by it before Adam, the scale halved on
    an overflow and doubled after `dynamic_growth_steps` good steps;
  - the non-finite guard: a step whose loss or gradients are not finite on
    any replica is skipped whole (weights and Adam state untouched);
  - the moving average of the weights (`WeightAverage`), when the run keeps
    one: updated after every applied step, never after a skipped one.

Only public Keras API is used: the scale bookkeeping is done here with the
optimizer's public `dynamic_scale`, `step_counter` and `dynamic_growth_steps`
because finiteness has to be decided over every replica first, which Keras'
own `apply` cannot be told.
"""

import math
from typing import Dict, NamedTuple, Optional

import keras
import tensorflow as tf


class StepOutcome(NamedTuple):
  """Replica-agreed flags of one update.

  applied: loss and gradients were finite everywhere; the update was made.
  overflow: a loss-scale overflow (finite loss, non-finite scaled gradients,
    scale above 1): skipped and the scale halved, not a bad step. Always
    False without loss scaling.
  """
  applied: tf.Tensor
  overflow: tf.Tensor

  @property
  def bad(self) -> tf.Tensor:
    """A skipped step that was not a loss-scale overflow (the guard counts it)."""
    return tf.logical_not(tf.logical_or(self.applied, self.overflow))


class GuardedUpdate:
  """Replica scaling, L2 decay, loss scaling and the non-finite skip for one
  optimizer (an Adam, optionally inside a LossScaleOptimizer).

  Args:
    optimizer: the model's compiled optimizer.
    weight_decay: the L2 coefficient of docs/method.md §6.
    average: the run's `WeightAverage`, updated after each applied step;
      None: no average.
  """

  def __init__(self, optimizer: keras.optimizers.Optimizer, weight_decay: float,
               average: Optional["WeightAverage"] = None):
    self.optimizer = optimizer
    self.weight_decay = weight_decay
    self.average = average
    self.scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    self.replicas = tf.distribute.get_strategy().num_replicas_in_sync

  def replica_loss(self, loss: tf.Tensor) -> tf.Tensor:
    """This replica's share of the global-batch mean loss (fit sums replicas)."""
    return loss / self.replicas

  def loss_for_gradients(self, loss: tf.Tensor) -> tf.Tensor:
    """What to differentiate: the replica share, times the loss scale if any."""
    share = self.replica_loss(loss)
    return self.optimizer.scale_loss(share) if self.scaling else share

  def loss_scale(self) -> tf.Tensor:
    """The current dynamic loss scale as float32 (only with loss scaling)."""
    return tf.cast(self.optimizer.dynamic_scale, tf.float32)

  def apply(self, grads, variables, loss: tf.Tensor) -> StepOutcome:
    """Adds the decay and applies `grads` to `variables` if every replica's
    loss and gradients are finite; `loss` is the unscaled total."""
    # Variables without a gradient (e.g. the perceptual confidence head when
    # the perceptual term is off) are left out rather than warned about.
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    finite_grads = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in pairs])
    finite_loss = tf.math.is_finite(self.replica_loss(loss))
    # Replica gradients are summed: each adds its share of the decay, times
    # the loss scale that the unscaling divides out again.
    decay = self.weight_decay / self.replicas
    if self.scaling:
      decay = decay * self.loss_scale()
    pairs = [(g + tf.cast(decay, g.dtype) * v, v) for g, v in pairs]
    return self._apply_if_finite(pairs, finite_loss, finite_grads)

  # -- internals ---------------------------------------------------------------

  def _agreed_flags(self, finite_loss, finite_grads) -> StepOutcome:
    """(applied, overflow) agreed by every replica and worker (one all-reduce)."""
    if tf.distribute.has_strategy():
      bad = tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM,
          tf.cast(tf.stack([~finite_loss, ~finite_grads]), tf.int32))
      finite_loss, finite_grads = tf.equal(bad[0], 0), tf.equal(bad[1], 0)
    overflow = tf.constant(False)
    if self.scaling:
      overflow = tf.logical_and(tf.logical_and(finite_loss, ~finite_grads),
                                self.optimizer.dynamic_scale > 1.0)
    return StepOutcome(tf.logical_and(finite_loss, finite_grads), overflow)

  def _apply_if_finite(self, pairs, finite_loss, finite_grads) -> StepOutcome:
    outcome = self._agreed_flags(finite_loss, finite_grads)
    grads = [g for g, _ in pairs]
    variables = [v for _, v in pairs]
    if not tf.distribute.has_strategy():
      self._conditional_update(outcome, lambda: self._update(grads, variables))
      return outcome

    # Under a strategy (even with one replica) the optimizer's update calls
    # merge_call, which may not sit inside a replica-context cond: the
    # condition is taken in cross-replica context instead.
    def merged(distribution, flags, grads, variables):
      local = StepOutcome(*distribution.experimental_local_results(flags)[0])
      self._conditional_update(local, lambda: distribution.extended.call_for_each_replica(
          self._update, args=(grads, variables)))

    tf.distribute.get_replica_context().merge_call(
        merged, args=(tuple(outcome), grads, variables))
    return outcome

  def _conditional_update(self, outcome: StepOutcome, update):
    tf.cond(outcome.applied, update, lambda: None)
    if self.scaling:
      tf.cond(outcome.overflow, self._halve_scale, lambda: None)

  def _halve_scale(self):
    # A LossScaleOptimizer's own bookkeeping for a skipped overflow step.
    self.optimizer.step_counter.assign(0)
    self.optimizer.dynamic_scale.assign(self.optimizer.dynamic_scale / 2.0)

  def _update(self, grads, variables):
    """The update of a step known to be finite everywhere."""
    self._apply_gradients(grads, variables)
    if self.average is not None:
      self.average.update()

  def _apply_gradients(self, grads, variables):
    if not self.scaling:
      self.optimizer.apply_gradients(zip(grads, variables))
      return
    optimizer = self.optimizer
    scale = optimizer.dynamic_scale
    optimizer.inner_optimizer.apply_gradients(
        zip([g / tf.cast(scale, g.dtype) for g in grads], variables))

    def grow():
      optimizer.step_counter.assign(0)
      optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 2.0)

    # The scale doubles after `dynamic_growth_steps` good steps in a row.
    tf.cond(tf.equal(optimizer.step_counter, optimizer.dynamic_growth_steps - 1),
            grow, lambda: optimizer.step_counter.assign_add(1))


def count_skips(outcome: StepOutcome, streak: tf.Variable, skipped: tf.Variable) -> None:
  """`streak`: bad steps in a row (0 after any other step); `skipped`: every
  step not applied, overflows included."""
  streak.assign(tf.where(outcome.bad, streak + 1, 0))
  skipped.assign_add(tf.where(outcome.applied, 0, 1))


def step_logs(terms: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """A step's outputs as Keras' `fit` can reduce them under any strategy.

  Under MultiWorkerMirroredStrategy Keras averages step outputs over the
  workers' replicas with `strategy.reduce(MEAN, value, axis=0)`, which needs
  an axis: [1] vectors reduce to the same scalars as on one worker.
  """
  if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
    return {k: v[None] for k, v in terms.items()}
  return terms


def weight_average_decay_at(decay: float, update: int) -> float:
  """The decay `WeightAverage` applies at its `update`-th update (from 0)."""
  return min(decay, (1.0 + update) / (10.0 + update))


def weight_average_warmup_updates(decay: float) -> int:
  """The update count n from which the warm-up `(1 + n) / (10 + n)` of
  `WeightAverage` no longer caps `decay`, i.e. the first n with
  `(1 + n) / (10 + n) >= decay` (0.999: 8,990; 0.9995: 17,990)."""
  update = max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay)))
  # The closed form can land one off in floating point; settle it exactly.
  while update > 0 and weight_average_decay_at(decay, update - 1) >= decay:
    update -= 1
  while weight_average_decay_at(decay, update) < decay:
    update += 1
  return update


def weight_average_shortfall(decay: float, total_steps: int) -> Optional[str]:
  """What to tell the user when a run of `total_steps` ends before the
  warm-up reaches `decay` (None when it does): the decay actually reached
  and the span it means, so that a larger --weight_average_decay is not
  mistaken for a longer average."""
  needed = weight_average_warmup_updates(decay)
  if total_steps > needed:
    return None
  reached = weight_average_decay_at(decay, max(total_steps - 1, 0))
  return (f"--weight_average_decay={decay:g} is reached only at update {needed:,} "
          f"(the warm-up min(decay, (1 + n) / (10 + n))); this run's {total_steps:,} "
          f"steps end at decay {reached:.5f}, an average over about the last "
          f"{1.0 / (1.0 - reached):,.0f} steps, whatever decay above {reached:.5f} "
          "is asked for")


class WeightAverage:
  """An exponential moving average of a model's trainable weights.

  After every applied step, `average = d * average + (1 - d) * weight` with
  `d = min(decay, (1 + n) / (10 + n))` for the n-th update: the short
  warm-up keeps the first steps' random weights from lingering in the
  average. It also caps the decay until update
  `weight_average_warmup_updates(decay)` (0.999: 8,990): until then the
  average spans about a ninth of the steps so far, whatever the decay. The
  averaged weights are what a finished run is evaluated and exported with
  (`tfsym3d.runs.restore_weights` loads them from a checkpoint that holds
  them); training itself always continues from the raw weights.

  Keras' `Adam(use_ema=True)` keeps the same average inside the optimizer,
  but its `fit` writes the average over the model's weights at the end of
  every `fit` call, and a resumed run makes two calls: here the raw and the
  averaged weights stay apart, both in the checkpoint.

  Args:
    weights: the trainable weights by checkpoint key (`runs.weight_dict`).
    decay: the decay d per step, in (0, 1); 1 / (1 - d) steps is about
      the average's span (0.999: the last thousand steps).
  Create it under the strategy's scope, like the model.
  """

  def __init__(self, weights: Dict[str, tf.Variable], decay: float):
    if not 0.0 < decay < 1.0:
      raise ValueError(f"weight average decay {decay}: must be in (0, 1) "
                       "(--weight_average_decay; 0 turns the average off)")
    self.decay = float(decay)
    self.weights = dict(weights)
    # Every replica computes the same average from the same weights: the
    # first replica's assignment is kept.
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.averaged = {
        key: tf.Variable(tf.convert_to_tensor(variable), trainable=False,
                         name="average_" + key.replace("/", "_"), aggregation=first)
        for key, variable in self.weights.items()}
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="average_updates", aggregation=first)

  def checkpoint_items(self) -> Dict[str, object]:
    """What a tf.train.Checkpoint saves of the average (see `runs.checkpoint_for`)."""
    return {"averaged_weights": dict(self.averaged), "average_updates": self.updates}

  def update(self) -> None:
    """Moves the average toward the current weights (one applied step)."""
    n = tf.cast(self.updates, tf.float32)
    decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))  # weight_average_decay_at
    for key, average in self.averaged.items():
      weight = tf.cast(self.weights[key], average.dtype)
      average.assign(decay * average + (1.0 - decay) * weight)
    self.updates.assign_add(1)

  def reset(self) -> None:
    """Starts the average again from the current weights (a run resumed from
    a checkpoint written without one)."""
    for key, average in self.averaged.items():
      average.assign(self.weights[key])
    self.updates.assign(0)

  def copy_to_weights(self) -> None:
    """Overwrites the weights with their average (the end of a run)."""
    for key, average in self.averaged.items():
      self.weights[key].assign(average)
