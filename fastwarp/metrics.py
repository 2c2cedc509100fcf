"""Registration metrics (Dice, Jacobian determinant, folding, similarity): the public path of
:mod:`fastwarp.app.metrics`."""

from .app.metrics import dice, evaluate, folding_fraction, jacobian_determinant, similarity

__all__ = ["dice", "jacobian_determinant", "folding_fraction", "similarity", "evaluate"]
