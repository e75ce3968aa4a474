"""Flax networks used by the pipeline, with their weights in ``weights/``.

* :mod:`jaxdrr.models.vnet`: CT -> (air, soft tissue, bone, metal) fractions (material decomposition).
* :mod:`jaxdrr.models.scatter_net`: low-resolution primary -> scatter image (``RenderConfig(scatter="net")``),
  trained on jaxdrr's Monte Carlo.

Only the networks and their weights live here. Their training (data generators, losses,
optimisers) is :mod:`jaxdrr.training`, which the runtime never imports, so it needs neither optax
nor the training data generators.
"""

from jaxdrr.models import scatter_net, vnet

__all__ = ["vnet", "scatter_net"]
