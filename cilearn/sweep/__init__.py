"""Sweeps: many runs from one grid (``cilearn sweep``).

- :mod:`.spec` — a sweep file → runs with readable, stable names, every config validated up front;
- :mod:`.execute` — one ``cilearn run`` child process per run, on a local pool or as Ray tasks; the
  summary and report at the end;
- :mod:`.commands` — the ``cilearn sweep`` command;
- :mod:`.child` — the child process: ``cilearn`` that dies with the sweep.

Nothing here imports torch or Ray at import time.
"""
