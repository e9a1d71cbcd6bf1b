"""Weighing overhead benchmark (see ``qaflora.bench.weigh``): ``python benchmarks/weigh.py --help``."""

from qaflora.bench.weigh import main

if __name__ == "__main__":
    raise SystemExit(main())
