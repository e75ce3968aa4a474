#!/bin/bash
# Data generation for the scatter ConvNet (resumable: rerun; finished samples are skipped).
# Two processes on 2 cores: the held-out test split then train 0-399, and train 400-999 beside it.
PY=${PY:-python}
$PY -m jaxdrr.training.scatter_data --out runs/scatter_data --split train --start 400 --count 600 --photons 1e6 &
$PY -m jaxdrr.training.scatter_data --out runs/scatter_data --split test --start 0 --count 8 --photons 8e6
$PY -m jaxdrr.training.scatter_data --out runs/scatter_data --split train --start 0 --count 400 --photons 1e6
wait
