"""Run jupyterhub-idle-culler unchanged, timing each ``cull_idle`` call (for incumbent_bench.py).

The incumbent logs no cycle time, so this wrapper prints one line per cycle to stderr:
``BENCH-CYCLE seconds=<wall> cpu=<process CPU>``. The command line goes to the incumbent as given.
"""

import sys
import time

import jupyterhub_idle_culler as incumbent

_cull_idle = incumbent.cull_idle


async def _timed_cull_idle(*args: object, **kwargs: object) -> None:
    began, cpu_began = time.monotonic(), time.process_time()
    try:
        await _cull_idle(*args, **kwargs)
    finally:
        seconds, cpu = time.monotonic() - began, time.process_time() - cpu_began
        print(f"BENCH-CYCLE seconds={seconds:.3f} cpu={cpu:.3f}", file=sys.stderr, flush=True)


incumbent.cull_idle = _timed_cull_idle  # start() binds the module global when it builds its partial

if __name__ == "__main__":
    incumbent.main()
