import os

# Tests run on the CPU; keep XLA from grabbing all cores' worth of threads per xdist worker.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
