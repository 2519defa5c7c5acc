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
from fkd_jax.models.networks import Layers, ResNetBackbone, _upsample_2x

WIDTHS = (8, 16, 24, 32, 48)  # stages at 1/2 ... 1/32 of the canvas


class FaceNet(nnx.Module):
    """(B, S, S, 1) canvases -> (B, G, G, CHANNELS) raw outputs; S = INPUT_SIZE,
    G = S / STRIDE."""

    def __init__(self, make: Layers, widths=WIDTHS, blocks: int = 1):
        self.backbone = ResNetBackbone(make, widths, blocks, INPUT_SIZE)
        finest = self.backbone.stage_sizes.index(INPUT_SIZE // STRIDE)
        self.laterals, self.smooths, self.norms = nnx.List(), nnx.List(), nnx.List()
        for coarse in range(len(widths) - 1, finest, -1):
            w_in, w_out = widths[coarse], widths[coarse - 1]
            self.laterals.append(make.conv(w_in, w_out, 1, bias=False))
            self.smooths.append(make.conv(w_out, w_out, 3, bias=False))
            self.norms.append(make.group_norm(w_out))
        self.hidden = make.conv(widths[finest], widths[finest], 3)
        self.head = make.conv(widths[finest], CHANNELS, 1)

    def __call__(self, x):
        feats = self.backbone.stages(x)
        y = feats[-1]
        for lateral, smooth, norm, skip in zip(self.laterals, self.smooths, self.norms,
                                               feats[-2::-1]):
            y = jax.nn.relu(norm(smooth(_upsample_2x(lateral(y)) + skip)))
        return self.head(jax.nn.relu(self.hidden(y)))


def create_face_net(seed: int = 0, conv_impl: str = "auto") -> FaceNet:
    """A freshly initialised detector (`conv_impl` as for keypoint models: "portable" for
    the ONNX export)."""
    return FaceNet(Layers.create("float32", conv_impl, seed))


def face_net_loss(outputs: jax.Array, heat: jax.Array, targets: jax.Array, centres: jax.Array
                  ) -> tuple[jax.Array, dict]:
    """CenterNet's loss: a focal loss on the centre heatmap against Gaussian bumps `heat`
    (B, G, G) in [0, 1] (1 at each face's centre cell), normalised by the number of faces;
    L1 on the five regressed channels at the centre cells (`centres` (B, G, G) 1 there,
    `targets` (B, G, G, 5) the true offsets, log side, cos and sin)."""
    logit = outputs[..., 0]
    p = jax.nn.sigmoid(logit)
    log_p, log_q = jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)
    pos = centres
    focal = -(pos * (1 - p) ** 2 * log_p
              + (1 - pos) * (1 - heat) ** 4 * p ** 2 * log_q)
    n = jnp.maximum(pos.sum(), 1.0)
    heat_loss = focal.sum() / n
    reg = (jnp.abs(outputs[..., 1:] - targets) * pos[..., None]).sum() / n
    return heat_loss + reg, {"heat": heat_loss, "box": reg}
