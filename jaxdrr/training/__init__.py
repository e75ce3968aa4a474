"""Training: the data generators and trainers of the networks in :mod:`jaxdrr.models`.

The runtime never imports this package: rendering, decomposition and scatter estimation need only
the networks and their shipped weights (:mod:`jaxdrr.models`), not optax or the generators. It sits
above the ``jaxdrr`` facade (it renders and runs the Monte Carlo to make its data) and below the CLI.

* :mod:`jaxdrr.training.train_vnet`: trains the material-decomposition V-Net
  (:mod:`jaxdrr.models.vnet`) on procedural synthetic CTs (:mod:`jaxdrr.phantoms.synthetic`);
* :mod:`jaxdrr.training.vnet_data`: training pairs (a 2 mm patch and its 6 mm context) of random
  anatomical and procedural CTs with exact fractions, and the held-out validation CTs;
* :mod:`jaxdrr.training.train_vnet2`: trains the two-scale V-Net (context + fine network, EMA
  weights, selection on held-out synthetic CTs) on that data;
* :mod:`jaxdrr.training.scatter_data`: Monte Carlo scatter of random synthetic patients, the
  training data of the scatter ConvNet;
* :mod:`jaxdrr.training.scatter_data2`: its second generation (random anatomical and synthetic
  patients, thick views, local majorants and forced detection until a 1 % noise floor);
* :mod:`jaxdrr.training.train_scatter`: trains the scatter ConvNet (:mod:`jaxdrr.models.scatter_net`)
  on that data, and its error metrics against Monte Carlo.

Each module is a command (resumable; the weights README names the exact runs)::

    python -m jaxdrr.training.train_vnet --run-dir runs/vnet --steps 3000
    python -m jaxdrr.training.train_vnet2 --run-dir runs/vnet2
    python -m jaxdrr.training.scatter_data --out runs/scatter_data --split train --count 400
    python -m jaxdrr.training.scatter_data2 --out runs/scatter_data2 --split train --count 2000
    python -m jaxdrr.training.train_scatter --data runs/scatter_data --run-dir runs/scatter

The submodules are not imported here, so ``import jaxdrr.training.scatter_data`` loads only what
that command needs.
"""
