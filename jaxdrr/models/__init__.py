"""Flax networks used by the pipeline, with their weights in ``weights/``.

* :mod:`jaxdrr.models.vnet`: CT -> (air, soft tissue, bone, metal) fractions (material decomposition).

Training scripts (``train_*.py``) sit beside their models but are not imported here, so the runtime
needs neither optax nor the training data generator.
"""

from jaxdrr.models import vnet

__all__ = ["vnet"]
