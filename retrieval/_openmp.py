"""How long torch's OpenMP threads spin at a barrier before they sleep: set before torch is first imported.

libgomp's default (300,000 spins) keeps idle threads busy for a while after each parallel region. On 2 shared
cores with other work running, those spins took the CPU from the threads that had work: a single Lite0
classify went from 18 ms to p50 109 ms, p99 1.8 s beside two busy loops. 20,000 spins gave the same 18 ms when
the machine was quiet, and p50 55 ms, p99 200 ms beside the loops; OMP_WAIT_POLICY=PASSIVE doubled the quiet
latency (36 ms). docs/benchmarks.md, "OpenMP spinning", has the table. A value the user set is kept.
"""

import os

GOMP_SPINCOUNT = "20000"

os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
