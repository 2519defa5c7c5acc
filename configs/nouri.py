"""Nouri's kfkd net (conv 32@3x3, 64@2x2, 128@2x2 + pools; dense 500, 500): 8.05M parameters."""

from configs import base


def get_config():
    c = base.get_config()
    c.model.name = "nouri"
    c.train.batch_size = 128
    return c
