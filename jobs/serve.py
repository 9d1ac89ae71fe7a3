"""Deploy der_ray's OpenAI-compatible HTTP API (routing graph, fusion graph, direct experts) on Ray Serve.

    python jobs/serve.py --config der_ray/configs/serve.yaml --router-checkpoint /abs/out/router
    ray job submit --address http://127.0.0.1:8265 -- python jobs/serve.py --config ... --detach

Binds 127.0.0.1:8000 unless configured. Without --detach it serves until interrupted; with it, it
returns once the app is up (on a cluster that outlives the job, the app keeps running). Same flags as
``der-ray serve``.
"""

from __future__ import annotations

import argparse
import sys


def make_parser() -> argparse.ArgumentParser:
    from der_ray.serve.launch import add_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main
    from der_ray.serve.launch import run

    return run_main(lambda stack: run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
