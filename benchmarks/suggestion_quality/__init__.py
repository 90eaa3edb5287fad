"""Suggestion-quality benchmark: how good is each LR finder's suggestion on small CPU tasks?

Run it with ``nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.run`` (see
``run.py``). Ground truth is a constant-LR grid (cached in ``grid_cache.json``); every method's
suggestion is trained with the same budget and seeds and scored by its regret.
"""
