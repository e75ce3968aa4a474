"""Parametric surgical instruments and implants: K-wires, screws, plates, guidewires, catheters.

An *instrument* is three things (:class:`Instrument`):

* a **mesh**: a closed, outward-oriented :class:`jaxdrr.mesh.TriangleMesh` in millimetres, in the
  instrument's own frame. Straight instruments lie along +z with their base (wire end, screw head,
  plate end) at the origin and their tip at ``(0, 0, length)``; swept ones (guidewire, catheter) live
  in the frame of their control points;
* **landmarks**: named points [3] (mm, same frame) such as ``"tip"``, ``"base"``, a screw's
  ``"head"``, a plate's ``"hole_<k>"`` or a guidewire's ``"centreline_<i>"``: the points a navigation
  or registration task reports;
* a default **material**: an attenuation-table name (:data:`jaxdrr.physics.COMPOSITIONS`:
  ``"stainless_steel_316l"``, ``"ti6al4v"``, ``"cobalt_chrome"``, ``"peek"``, ``"tungsten"``, ...)
  and its density (g/cm^3).

A scene places an instrument with a :class:`jaxdrr.geometry.rigid.RigidTransform` and renders it
with its material and density; both can be overridden per builder call. The meshes are built with
NumPy from watertight primitives (:mod:`jaxdrr.instruments.primitives`), deterministically: the same
parameters give bit-identical meshes.
"""

from jaxdrr.instruments.base import Instrument, make_instrument
from jaxdrr.instruments.guidewire import catheter, guidewire
from jaxdrr.instruments.kwire import kwire
from jaxdrr.instruments.plate import plate
from jaxdrr.instruments.primitives import InstrumentError, polygon_area_ratio
from jaxdrr.instruments.screw import screw

__all__ = [
    "Instrument",
    "InstrumentError",
    "catheter",
    "guidewire",
    "kwire",
    "make_instrument",
    "plate",
    "polygon_area_ratio",
    "screw",
]
