"""Reports from finished runs: plots, tables, t-SNE, Grad-CAM and one self-contained HTML page.

Nothing here retrains: everything is read from run directories (``metrics.json``, ``log.csv``,
``predictions/task_XX.npz``, ``checkpoints/task_XX.pt``).  Sub-modules import matplotlib and
scikit-learn themselves, so importing this package (and ``cilearn --help``) stays fast.

- :mod:`.runs` — find runs below the given folders, group them by method, read their files;
- :mod:`.model` — :func:`~cilearn.report.model.load_run_model`: a run's model after task i, rebuilt;
- :mod:`.gradcam`, :mod:`.tsne` — Grad-CAM heatmaps and t-SNE embeddings;
- :mod:`.plots` — every figure (matplotlib, Agg);
- :mod:`.build` — :func:`~cilearn.report.build.make_report`, the whole report;
- :mod:`.commands` — ``cilearn report``, ``cilearn gradcam``, ``cilearn tsne``.
"""

from ..errors import CilearnError


class ReportError(CilearnError):
    """A run folder, checkpoint or image that a report cannot use."""


__all__ = ["ReportError"]
