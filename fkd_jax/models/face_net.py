"""A small learned face detector: a whole picture in, the training square of each face out.

Why: on ~250-pixel photos OpenCV's Haar cascade and its second look were two thirds of a
photo's CPU time, and its box is only a first guess at the keypoint model's square (the
training rule's, `framing_from_keypoints` with rotate=True), which this net predicts. Its
canvas and outputs are defined in `fkd_jax.data.face_scenes`. A residual encoder down to 1/32
(`ResNetBackbone`) and a top-down decoder back to 1/8, as the heatmap U-Net does for
keypoints. Decoding (peaks, squares in picture pixels) is numpy, in
`fkd_jax.pictures.face_net_detector`, so an exported detector runs without jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fkd_jax.data.face_scenes import CHANNELS, INPUT_SIZE, STRIDE
from fkd_jax.models.networks import Layers, ResNetBackbone, top_down, top_down_layers

WIDTHS = (8, 16, 24, 32, 48)  # stages at 1/2 ... 1/32 of the canvas


class FaceNet(nnx.Module):
    """(B, S, S, 1) canvases -> (B, G, G, CHANNELS) raw outputs; S = INPUT_SIZE,
    G = S / STRIDE."""

    def __init__(self, make: Layers, widths=WIDTHS, blocks: int = 1):
        self.backbone = ResNetBackbone(make, widths, blocks, INPUT_SIZE)
        finest = self.backbone.stage_sizes.index(INPUT_SIZE // STRIDE)
        self.laterals, self.smooths, self.norms = top_down_layers(make, widths, finest)
        self.hidden = make.conv(widths[finest], widths[finest], 3)
        self.head = make.conv(widths[finest], CHANNELS, 1)

    def __call__(self, x):
        y = top_down(self.backbone.stages(x), self.laterals, self.smooths, self.norms)
        return self.head(jax.nn.relu(self.hidden(y)))


def create_face_net(seed: int = 0, conv_impl: str = "auto") -> FaceNet:
    """A freshly initialised detector (`conv_impl` as for keypoint models: "portable" for
    the ONNX export)."""
    return FaceNet(Layers.create("float32", conv_impl, seed))


def face_net_loss(outputs: jax.Array, heat: jax.Array, targets: jax.Array, centres: jax.Array,
                  near: jax.Array) -> tuple[jax.Array, dict]:
    """CenterNet's loss: a focal loss on the centre heatmap against Gaussian bumps `heat`
    (B, G, G) in [0, 1] with the faces' centre cells `centres` (B, G, G) as positives,
    normalised by the number of faces; L1 on the five regressed channels against `targets`
    (B, G, G, 5) in the cells marked by `near` (`fkd_jax.data.face_scenes.targets`)."""
    logit = outputs[..., 0]
    p = jax.nn.sigmoid(logit)
    log_p, log_q = jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)
    focal = -(centres * (1 - p) ** 2 * log_p
              + (1 - centres) * (1 - heat) ** 4 * p ** 2 * log_q)
    heat_loss = focal.sum() / jnp.maximum(centres.sum(), 1.0)
    reg = (jnp.abs(outputs[..., 1:] - targets) * near[..., None]).sum() / jnp.maximum(
        near.sum(), 1.0)
    return heat_loss + reg, {"heat": heat_loss, "box": reg}
