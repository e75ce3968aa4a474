"""Time to voxelise the built-in phantom (was a wall-clock assertion in the tests; timings live here).

python benchmarks/bench_phantom.py --size 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jaxdrr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = (args.size,) * 3
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        volume = jaxdrr.phantom(shape)
        volume.data.block_until_ready()
        times.append(time.perf_counter() - start)
    print(json.dumps({"shape": shape, "seconds": times, "median_s": statistics.median(times)}))


if __name__ == "__main__":
    main()
