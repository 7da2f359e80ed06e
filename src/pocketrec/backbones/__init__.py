"""Backbones: the part of a recommender that turns a batch into query vectors and a training loss.

A recommender is a backbone plus an item table (:mod:`pocketrec.tables`). The trainer, evaluation,
checkpoints and the device artifact go through :class:`~pocketrec.backbones.base.Recommender` and find a
backbone by the name stored in a checkpoint (:func:`~pocketrec.backbones.base.backbone_class`).
"""

from pocketrec.backbones.base import BACKBONES, Recommender, backbone_class

__all__ = ["BACKBONES", "Recommender", "backbone_class"]
