"""unimw's benchmark suite: ``python -m bench.run`` (``--quick`` for a smoke run).

* :mod:`bench.upstream` — a fake OpenAI-compatible upstream on raw asyncio,
  cheap enough never to dominate what it measures.
* :mod:`bench.run` — every performance figure, side by side with calling the
  upstream directly in the same run; a table on stdout, JSON in
  ``bench/results/latest.json``.
* :mod:`bench.summarize` — best and median of each figure across result files.
"""
