"""The photo-geometric autoencoder (docs/method.md §2-6) as one Keras model.

`Unsup3D.factors(images)` returns the canonical factors (`CanonicalFactors`:
depth, albedo, light, view, confidence); `Unsup3D(config)(images)` returns a
`Decomposition`: those factors, the reconstructions of both halves
(predicted and flipped) and the confidence maps. Losses, training,
visualisation, evaluation, export and the predictors read these two
structures; nothing outside this module calls the networks. How a step
applies its gradients is `tfsym3d.step`'s.
"""

import dataclasses
import math
from typing import Dict, NamedTuple, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from tfsym3d import geometry
from tfsym3d import losses as losses_lib
from tfsym3d import nets
from tfsym3d import step as step_lib
from tfsym3d.config import ModelConfig
from tfsym3d.render.warp import Renderer


class CanonicalFactors(NamedTuple):
  """The four factors of docs/method.md §2 and the confidence maps, for B
  images of size S (what `Unsup3D.factors` returns).

    depth: [B, S, S] canonical depth in [min_depth, max_depth], border
      columns set to border_depth.
    albedo: [B, S, S, 3] canonical albedo in [-1, 1].
    light: [B, 4] (ambient, diffuse, lx, ly), ambient and diffuse rescaled.
    light_direction: [B, 3] normalize([lx, ly, 1]).
    view: [B, 6] (rx, ry, rz) in radians and (tx, ty, tz).
    confidence: (sigma_l1 [B, S, S, 2], sigma_percl [B, S/4, S/4, 2]), or
      None without a confidence network (or when not asked for).
  """
  depth: tf.Tensor
  albedo: tf.Tensor
  light: tf.Tensor
  light_direction: tf.Tensor
  view: tf.Tensor
  confidence: Optional[Tuple[tf.Tensor, tf.Tensor]] = None


@dataclasses.dataclass
class Decomposition:
  """What the model infers from a batch of B images of size S.

  Canonical (symmetric frame) factors, [-1, 1] images unless said otherwise:
    canon_depth: [B, S, S] depth in [min_depth, max_depth], border columns
      set to border_depth.
    canon_albedo: [B, S, S, 3].
    canon_normal: [B, S, S, 3] unit normals of canon_depth.
    canon_diffuse_shading: [B, S, S, 1] max(0, <n, l>).
    canon_shading: [B, S, S, 1] ambient + diffuse * diffuse_shading.
    canon_image: [B, S, S, 3] albedo lit by the shading.
  Global factors:
    light: [B, 4] (ambient, diffuse, lx, ly): ambient and diffuse rescaled
      to their ranges, (lx, ly) the raw direction components.
    light_direction: [B, 3] normalize([lx, ly, 1]).
    view: [B, 6] (rx, ry, rz) in radians and (tx, ty, tz).
  Reprojection into the input view, for the predicted factors and for the
  flipped ones (suffix _flip):
    recon_depth, recon_depth_flip: [B, S, S] clamped depth.
    recon_normal, recon_normal_flip: [B, S, S, 3].
    recon_image, recon_image_flip: [B, S, S, 3], multiplied by `mask`.
    recon_mask, recon_mask_flip: [B, S, S] validity of each half.
    mask: [B, S, S] recon_mask * recon_mask_flip, without gradient.
  Confidence (None when the model has no confidence network):
    conf_sigma_l1: [B, S, S, 2] (channel 0 for the predicted half, 1 for the
      flipped), conf_sigma_percl: [B, S/4, S/4, 2].
  """
  canon_depth: tf.Tensor
  canon_albedo: tf.Tensor
  canon_normal: tf.Tensor
  canon_diffuse_shading: tf.Tensor
  canon_shading: tf.Tensor
  canon_image: tf.Tensor
  light: tf.Tensor
  light_direction: tf.Tensor
  view: tf.Tensor
  recon_depth: tf.Tensor
  recon_depth_flip: tf.Tensor
  recon_normal: tf.Tensor
  recon_normal_flip: tf.Tensor
  recon_image: tf.Tensor
  recon_image_flip: tf.Tensor
  recon_mask: tf.Tensor
  recon_mask_flip: tf.Tensor
  mask: tf.Tensor
  conf_sigma_l1: Optional[tf.Tensor] = None
  conf_sigma_percl: Optional[tf.Tensor] = None

  def as_dict(self) -> Dict[str, tf.Tensor]:
    """The fields that are set, by name (for logging, export, summaries)."""
    # Not dataclasses.asdict: it deep-copies, which symbolic tensors refuse.
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}


def flip(maps):
  """Mirrors maps left-right: [B, H, W, ...] along W (docs/method.md §3)."""
  return tf.reverse(maps, axis=[2])


def _rescale(t, low, high):
  """[-1, 1] -> [low, high] as docs/method.md §2 writes it."""
  return (1 + t) / 2 * high + (1 - t) / 2 * low


def light_direction(light):
  """Unit light directions [B, 3] normalize([lx, ly, 1]) of lights [B, 4] (docs/method.md §2)."""
  light = tf.convert_to_tensor(light)
  direction = tf.concat([light[:, 2:4], tf.ones_like(light[:, :1])], axis=1)
  return direction / tf.norm(direction, axis=1, keepdims=True)


def shade(depth, albedo, light, direction, camera: geometry.Camera):
  """The canonical image of docs/method.md §4, as a pure function of the factors.

  Args:
    depth: [B, S, S] canonical depth; albedo: [B, S, S, 3] in [-1, 1].
    light: [B, 4] (ambient, diffuse, lx, ly); only ambient and diffuse are
      read here, the direction comes from `direction`.
    direction: [B, 3] unit light directions (e.g. `light_direction(light)`,
      or any other direction to relight with).
    camera: the model's camera (normals need its intrinsics).
  Returns:
    (normal [B, S, S, 3], diffuse shading [B, S, S, 1], shading [B, S, S, 1],
    canonical image [B, S, S, 3] in [-1, 1]).
  """
  normal = geometry.normals_from_depth(depth, camera)
  diffuse_shading = tf.maximum(
      tf.reduce_sum(normal * direction[:, None, None, :], -1, keepdims=True), 0.0)
  shading = light[:, None, None, 0:1] + light[:, None, None, 1:2] * diffuse_shading
  image = (albedo / 2 + 0.5) * shading * 2 - 1
  return normal, diffuse_shading, shading, image


class Unsup3D(keras.Model):
  """Depth, albedo, light, view and confidence networks with their renderer.

  Args:
    config: the model's constants; see `tfsym3d.config.ModelConfig`.
    precision: "float32", or "mixed_bfloat16" / "mixed_float16": the five
      networks' convolutions then compute in 16 bits (float32 variables).
      Everything else stays float32: the networks' GroupNorm layers and
      output activations, the factor rescaling, geometry, renderer, losses
      and the frozen VGG. Weights and checkpoints are the same either way.
    jit_compile: run the five networks (forward and backward) as one XLA
      program. The whole step cannot be one: the rasterizer's visibility
      search has data-dependent shapes (it compiles its own fixed-shape
      stages with XLA either way).
  """

  def __init__(self, config: ModelConfig = ModelConfig(), precision: str = "float32",
               jit_compile: bool = False, **kwargs):
    # The model itself computes in float32 whatever the networks do.
    super().__init__(dtype="float32", **kwargs)
    self.config = config
    self.precision = nets.check_precision(precision)
    size = config.image_size
    p = dict(dtype=precision)
    self.net_depth = nets.EDDeconv(1, config.zdim, config.nf, None, size, name="netD",
                                   **p)
    self.net_albedo = nets.EDDeconv(3, config.zdim, config.nf, "tanh", size,
                                    name="netA", **p)
    self.net_light = nets.Encoder(4, config.nf_encoder, size, name="netL", **p)
    self.net_view = nets.Encoder(6, config.nf_encoder, size, name="netV", **p)
    self.net_conf = (nets.ConfNet(config.zdim_conf, config.nf_conf, size, name="netC",
                                  **p)
                     if config.use_conf_map else None)
    self.jit_compile_networks = bool(jit_compile)
    self._networks_fn = (tf.function(self._run_networks, jit_compile=True)
                         if jit_compile else self._run_networks)
    self.renderer = Renderer(config)
    self.perceptual = (losses_lib.PerceptualLoss(config.vgg_weights, config.vgg_input)
                       if config.lam_perc > 0 else losses_lib.PerceptualLoss("none"))
    if config.lam_perc > 0 and not self.perceptual.enabled:
      logging.warning("Perceptual loss weight %.3g but VGG weights 'none': the "
                      "perceptual term is off.", config.lam_perc)
    # Changed by training between epochs (1.0 before lam_flip_start_epoch).
    self.lam_flip = tf.Variable(config.lam_flip, trainable=False, dtype=tf.float32,
                                name="lam_flip")
    # The depth smoothness weight, set by training at every epoch's start
    # (--lam_depth_sm_final's schedule). Deliberately not tracked, hence not
    # in checkpoints: nothing needs it restored, and checkpoints written
    # before it existed must keep loading.
    object.__setattr__(self, "lam_depth_sm", tf.Variable(
        config.lam_depth_sm, trainable=False, dtype=tf.float32, name="lam_depth_sm"))
    self._depth_border = self._border_mask(size)
    # Read by the non-finite guard of tfsym3d.train (checkpointed with the model).
    # Every replica agrees on a step's finiteness: keep the first's update.
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.nonfinite_streak = tf.Variable(0, trainable=False, dtype=tf.int32,
                                        name="nonfinite_streak", aggregation=first)
    self.skipped_steps = tf.Variable(0, trainable=False, dtype=tf.int32,
                                     name="skipped_steps", aggregation=first)
    # A training run's moving average of the weights (`keep_weight_average`);
    # untracked: `tfsym3d.runs.checkpoint_for` names it in checkpoints.
    object.__setattr__(self, "weight_average", None)

  def keep_weight_average(self, average: Optional[step_lib.WeightAverage]) -> None:
    """Updates `average` (a `tfsym3d.step.WeightAverage` of this model's
    trainable weights) after every applied training step; None: no average."""
    object.__setattr__(self, "weight_average", average)

  @property
  def networks(self) -> Dict[str, keras.Model]:
    """The networks by their reference names (netD, netA, netL, netV, netC)."""
    named = {"netD": self.net_depth, "netA": self.net_albedo, "netL": self.net_light,
             "netV": self.net_view}
    if self.net_conf is not None:
      named["netC"] = self.net_conf
    return named

  @property
  def has_confidence(self) -> bool:
    """Whether the model has the confidence network (config.use_conf_map)."""
    return self.net_conf is not None

  @staticmethod
  def _border_mask(size):
    """[1, S, S] 1.0 on the 2 leftmost and 2 rightmost columns."""
    columns = tf.pad(tf.zeros([size - 4]), [[2, 2]], constant_values=1.0)
    return tf.tile(columns[None, None, :], [1, size, 1])

  def build(self, input_shape):
    for net in self.networks.values():
      net.build(input_shape)
    super().build(input_shape)

  # -- the four factors ----------------------------------------------------

  def _run_networks(self, images):
    """The networks' raw outputs: (depth, albedo, light, view, confidence)."""
    conf = self.net_conf(images) if self.net_conf is not None else None
    return (self.net_depth(images), self.net_albedo(images), self.net_light(images),
            self.net_view(images), conf)

  def factors(self, images, confidence: bool = True,
              depth_scope: Optional[str] = None) -> CanonicalFactors:
    """The canonical factors of images [B, S, S, 3] in [-1, 1] (docs/method.md §2).

    This is the one place the networks run: `call`, export and the
    predictors all read their factors from here.

    Args:
      confidence: also run the confidence network (when the model has one).
      depth_scope: a name scope for the depth network and its head. Export
        names one so that full-int8 TFLite can keep exactly those ops in
        float32; the networks then run one by one, not as one XLA program.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if depth_scope is None and confidence:
      raw_depth, albedo, raw_light, raw_view, conf = self._networks_fn(images)
      depth = self._depth_head(raw_depth)
    else:
      with tf.name_scope(depth_scope or "depth"):
        depth = self._depth_head(self.net_depth(images))
      albedo, raw_light, raw_view = (self.net_albedo(images), self.net_light(images),
                                     self.net_view(images))
      conf = (self.net_conf(images) if confidence and self.net_conf is not None
              else None)
    light, direction = self._light_head(raw_light)
    return CanonicalFactors(depth=depth, albedo=albedo, light=light,
                            light_direction=direction, view=self._view_head(raw_view),
                            confidence=None if conf is None else tuple(conf))

  def _depth_head(self, raw):
    """netD's output [B, S, S, 1] -> canonical depth [B, S, S] (docs/method.md §2)."""
    cfg = self.config
    raw = raw[..., 0]
    # Zero-mean before tanh: the depth's offset is the viewpoint's job (tz).
    raw = raw - tf.reduce_mean(raw, axis=[1, 2], keepdims=True)
    depth = _rescale(tf.tanh(raw), cfg.min_depth, cfg.max_depth)
    border = self._depth_border
    return depth * (1 - border) + border * cfg.border_depth

  def _light_head(self, raw):
    """netL's output [B, 4] -> (light [B, 4], direction [B, 3])."""
    cfg = self.config
    ambient = _rescale(raw[:, 0:1], cfg.min_amb_light, cfg.max_amb_light)
    diffuse = _rescale(raw[:, 1:2], cfg.min_diff_light, cfg.max_diff_light)
    light = tf.concat([ambient, diffuse, raw[:, 2:4]], axis=1)
    return light, light_direction(light)

  def _view_head(self, raw):
    """netV's output [B, 6] -> rotations in radians, then translations."""
    cfg = self.config
    return tf.concat([raw[:, 0:3] * math.radians(cfg.xyz_rotation_range),
                      raw[:, 3:5] * cfg.xy_translation_range,
                      raw[:, 5:6] * cfg.z_translation_range], axis=1)

  def depth(self, images, raw=None):
    """Canonical depth [B, S, S] (docs/method.md §2); `raw`: netD's output if known."""
    return self._depth_head(self.net_depth(images) if raw is None else raw)

  def light(self, images, raw=None):
    """(light [B, 4], direction [B, 3]) (docs/method.md §2); `raw`: netL's output."""
    return self._light_head(self.net_light(images) if raw is None else raw)

  def view(self, images, raw=None):
    """Viewpoint [B, 6]: rotations in radians, then translations
    (docs/method.md §2); `raw`: netV's output."""
    return self._view_head(self.net_view(images) if raw is None else raw)

  def shade(self, depth, albedo, light, direction):
    """Normals, diffuse shading, shading and canonical image (docs/method.md §4)."""
    return shade(depth, albedo, light, direction, self.renderer.camera)

  # -- forward -------------------------------------------------------------

  def call(self, images, training=False) -> Decomposition:
    """Decomposes images [B, S, S, 3] in [-1, 1] (docs/method.md §2-5)."""
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    factors = self.factors(images)
    depth, albedo, light, direction, view = (factors.depth, factors.albedo, factors.light,
                                             factors.light_direction, factors.view)

    # Both halves at once: predicted factors and their mirror images share
    # the light and the viewpoint (docs/method.md §3).
    depth2 = tf.concat([depth, flip(depth)], 0)
    albedo2 = tf.concat([albedo, flip(albedo)], 0)
    light2, direction2 = tf.tile(light, [2, 1]), tf.tile(direction, [2, 1])
    view2 = tf.tile(view, [2, 1])
    # The scope names the renderer's ops in profiles (tfsym3d.profiling).
    with tf.name_scope("render"):
      normal2, diffuse2, shading2, canon_image2 = self.shade(depth2, albedo2, light2,
                                                             direction2)
      recon_depth2 = self.renderer.reconstructed_depth(depth2, view2)
      recon_normal2 = geometry.normals_from_depth(recon_depth2, self.renderer.camera)
      recon_image2 = self.renderer.reconstruct_image(canon_image2, recon_depth2, view2)
      recon_mask2 = self.renderer.valid_mask(recon_depth2)
    mask = tf.stop_gradient(recon_mask2[:batch] * recon_mask2[batch:])
    recon_image2 = recon_image2 * tf.tile(mask, [2, 1, 1])[..., None]

    conf_l1, conf_percl = factors.confidence or (None, None)

    first, second = lambda t: t[:batch], lambda t: t[batch:]
    return Decomposition(
        canon_depth=depth, canon_albedo=albedo, canon_normal=first(normal2),
        canon_diffuse_shading=first(diffuse2), canon_shading=first(shading2),
        canon_image=first(canon_image2), light=light, light_direction=direction,
        view=view,
        recon_depth=first(recon_depth2), recon_depth_flip=second(recon_depth2),
        recon_normal=first(recon_normal2), recon_normal_flip=second(recon_normal2),
        recon_image=first(recon_image2), recon_image_flip=second(recon_image2),
        recon_mask=first(recon_mask2), recon_mask_flip=second(recon_mask2),
        mask=mask, conf_sigma_l1=conf_l1, conf_sigma_percl=conf_percl)

  # -- losses and training -------------------------------------------------

  def compute_losses(self, images, out: Decomposition) -> Dict[str, tf.Tensor]:
    """Every loss term of docs/method.md §6 and the total, by name."""
    with tf.name_scope("losses"):   # names the ops in profiles
      return self._compute_losses(images, out)

  def _compute_losses(self, images, out: Decomposition) -> Dict[str, tf.Tensor]:
    cfg = self.config
    sigma = lambda conf, i: None if conf is None else conf[..., i:i + 1]
    terms = {
        "l1": losses_lib.photometric_loss(out.recon_image, images, out.mask,
                                          sigma(out.conf_sigma_l1, 0)),
        "l1_flip": losses_lib.photometric_loss(out.recon_image_flip, images, out.mask,
                                               sigma(out.conf_sigma_l1, 1)),
    }
    lam_flip = tf.cast(self.lam_flip, tf.float32)
    total = terms["l1"] + lam_flip * terms["l1_flip"]
    if self.perceptual.enabled and cfg.lam_perc > 0:
      batch = tf.shape(images)[0]
      # One VGG pass for both reconstructions and the input.
      feats = self.perceptual.features(
          tf.concat([out.recon_image, out.recon_image_flip, images], 0))
      f_recon, f_flip, f_input = feats[:batch], feats[batch:2 * batch], feats[2 * batch:]
      terms["perc"] = losses_lib.feature_loss(f_recon, f_input, out.mask,
                                              sigma(out.conf_sigma_percl, 0))
      terms["perc_flip"] = losses_lib.feature_loss(f_flip, f_input, out.mask,
                                                   sigma(out.conf_sigma_percl, 1))
      total += cfg.lam_perc * (terms["perc"] + lam_flip * terms["perc_flip"])
    if cfg.lam_depth_sm > 0:
      terms["depth_smooth"] = losses_lib.depth_smoothness(
          out.canon_depth, cfg.min_depth, cfg.max_depth)
      total += tf.cast(self.lam_depth_sm, tf.float32) * terms["depth_smooth"]
    terms["total"] = total
    return terms

  def train_step(self, data):
    """One Adam step on a batch of images (Keras `fit` calls this).

    Applying the gradients (replica scaling, classic L2 decay, the loss-scale
    policy of mixed_float16 and the skip of non-finite steps) is
    `tfsym3d.step.GuardedUpdate`'s job. `nonfinite_streak` counts skipped
    bad steps in a row and `skipped_steps` all of them, for
    `tfsym3d.train`'s guard; a loss-scale overflow is not a bad step.
    """
    images = _images_of(data)
    update = step_lib.GuardedUpdate(self.optimizer, self.config.weight_decay,
                                    self.weight_average)
    with tf.GradientTape() as tape:
      terms = self.compute_losses(images, self(images, training=True))
      loss = update.loss_for_gradients(terms["total"])
    grads = tape.gradient(loss, self.trainable_variables)
    with tf.name_scope("optimizer"):   # names the update's ops in profiles
      outcome = update.apply(grads, self.trainable_variables, terms["total"])
    step_lib.count_skips(outcome, self.nonfinite_streak, self.skipped_steps)
    terms["nonfinite_streak"] = self.nonfinite_streak.value()
    if update.scaling:
      terms["loss_scale"] = update.loss_scale()
    return step_lib.step_logs(terms)

  def test_step(self, data):
    """Loss terms of a batch for Keras' `evaluate` (training validates with
    `tfsym3d.train.Validation`, which also reports SIDE and MAD)."""
    images = _images_of(data)
    return self.compute_losses(images, self(images, training=False))


def _images_of(data):
  """The images of a batch that may be `images` or `(images, depth_gt)`."""
  return data[0] if isinstance(data, (tuple, list)) else data


def make_optimizer(config: ModelConfig, learning_rate=None,
                   epsilon: float = 1e-8) -> keras.optimizers.Optimizer:
  """Adam(lr, betas 0.9 / 0.999) as the reference; decay lives in train_step.

  Args:
    learning_rate: None (config.learning_rate) or a Keras learning-rate
      schedule. Give a schedule here rather than assigning it later: replacing
      the optimiser's learning-rate variable afterwards leaves it unsaveable
      by tf.train.Checkpoint.
    epsilon: Adam's epsilon (the reference's 1e-8).
  """
  lr = config.learning_rate if learning_rate is None else learning_rate
  return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=epsilon)


def make_training_optimizer(config: ModelConfig, learning_rate=None,
                            precision: str = "float32",
                            epsilon: float = 1e-8) -> keras.optimizers.Optimizer:
  """`make_optimizer`, wrapped in a dynamic LossScaleOptimizer for
  mixed_float16 (float16 gradients underflow without loss scaling;
  bfloat16 has float32's range and needs none)."""
  optimizer = make_optimizer(config, learning_rate, epsilon)
  if nets.check_precision(precision) == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
