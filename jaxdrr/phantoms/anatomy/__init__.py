"""A detailed, deterministic adult trunk (and knee) CT for demos: the CLI's built-in image.

:func:`demo_volume` paints one adult anatomy in a fixed "trunk frame" (world mm, RAS+: +x patient
right, +y anterior, +z superior; the origin is midway between the femoral head centres) and cuts a
region out of it:

* ``pelvis``: lumbar spine L3-L5 with pedicles, laminae, spinous and transverse processes; a curved
  sacrum with its alae, foramina and the sacro-iliac joints; iliac wings (thin fossa, thick crest,
  pelvic brim), acetabula, ischia, pubic rami around the obturator foramina, the symphysis; femoral
  heads in the acetabula, necks, trochanters and shafts with a medullary canal; gluteal, psoas and
  thigh muscles, bladder, colon with haustra and mottled stool and gas, small bowel.
* ``chest``: thoracic spine, twelve pairs of ribs with costal cartilages, sternum, clavicles,
  scapulae, humeral heads; lungs with branching vessels, hila, trachea and bronchi; heart, aortic arch,
  diaphragm domes with the liver and the gastric air bubble below.
* ``abdomen``: lower ribs, T12-L5, liver, spleen, kidneys in perirenal fat, psoas, stomach, colon and
  small bowel, iliac crests.
* ``limb``: a knee (distal femur with condyles, patella, tibial plateau and spines, fibular head).

Every bone is a signed-distance shape (smooth unions of ellipsoids, tapered capsules and curved
plates cut from 2D outlines, some fitted through 3D landmarks) painted as a cortical shell around a
trabecular core: thin sheets along the zero set of a smooth random field stretched along z (plates and
rods in marrow), so the cortex is brighter than the interior in a radiograph.
Surfaces are anti-aliased (coverage from the signed distance), and the result goes through a light
CT image formation (in-plane/slice blur, noise). :func:`demo_volume` is a model for pictures;
:mod:`~jaxdrr.phantoms.anatomy.random_ct` paints the same anatomy randomly posed, deformed, with
random tissue values, contrast, implants and a random scanner, and composites exact material
fractions as it paints: training data for material decomposition (beside the procedural
:mod:`jaxdrr.phantoms.synthetic`, whose output this package never changes). Everything is numpy/scipy and deterministic given the seed; the pelvis at the default
1.6 mm takes a few seconds.

Modules, low to high:

* :mod:`~jaxdrr.phantoms.anatomy.shapes`: signed-distance primitives with world bounding boxes;
* :mod:`~jaxdrr.phantoms.anatomy.scene`: the HU grid, painting (fill, bone) and tissue values;
* :mod:`~jaxdrr.phantoms.anatomy.spine`, :mod:`~jaxdrr.phantoms.anatomy.body` (skin, fat, muscle,
  abdominal cavity, diaphragm), :mod:`~jaxdrr.phantoms.anatomy.pelvis`,
  :mod:`~jaxdrr.phantoms.anatomy.chest`, :mod:`~jaxdrr.phantoms.anatomy.abdomen`,
  :mod:`~jaxdrr.phantoms.anatomy.knee`: the anatomy, one painter per part;
* :mod:`~jaxdrr.phantoms.anatomy.ct`: regions, painting order and CT image formation
  (:func:`demo_hu`, :func:`demo_volume`);
* :mod:`~jaxdrr.phantoms.anatomy.random_ct`: random, exactly labelled CTs of the anatomy
  (:func:`~jaxdrr.phantoms.anatomy.random_ct.random_anatomical_ct`), painted on a
  :class:`~jaxdrr.phantoms.anatomy.random_ct.LabelledScene`.
"""

from jaxdrr.phantoms.anatomy.ct import DEMO_REGIONS, demo_hu, demo_volume

__all__ = ["DEMO_REGIONS", "demo_hu", "demo_volume"]
