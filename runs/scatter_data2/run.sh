#!/bin/bash
# Scatter training data, second generation (jaxdrr/training/scatter_data2.py; docs/scatter.md
# "Training data"). Resumable: rerun this script; finished samples ({split}/NNNNN.npz, gitignored)
# are skipped, log.jsonl (committed) records histories, CPU seconds and the noise floor per sample.
# Held-out split first (60 samples, >= 50 needed), then the 2,000 training samples.
# Started in the background from the repository root with
#   setsid nohup nice -n 10 bash runs/scatter_data2/run.sh >> runs/scatter_data2/stdout.log 2>&1 &
set -e
PY=${PY:-python}
OUT=runs/scatter_data2
$PY -m jaxdrr.training.scatter_data2 --out $OUT --split test --start 0 --count 60 --target 0.01
$PY -m jaxdrr.training.scatter_data2 --out $OUT --split train --start 0 --count 2000 --target 0.01
