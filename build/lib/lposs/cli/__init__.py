"""Entry points: ``lposs-eval`` (= ``main_eval.py``), ``lposs-demo``, ``lposs-app``, the benchmarks, the GPU check
and the dataset converters. Each module has ``parse_args(argv)`` and ``main(args) -> int``; ``tools/<name>.py`` and
``main_eval.py`` at the top of a checkout are thin wrappers of them."""
