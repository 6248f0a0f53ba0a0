"""Classification pipelines: a pretrained deterministic network against its Bayesian
version (MOPED guide + SVI), scored on held-out and out-of-distribution inputs.

* :func:`run_digits`: an MLP 64-256-256-10 trained on the built-in digits, made Bayesian
  entirely; OOD sets are upside-down, transposed and uniform-noise images.
* :func:`run_text`: the shipped MiniLM-L6 BERT fine-tuned on the shipped sentiment set (or
  a GLUE task), with a chosen part made Bayesian (default: head + last encoder layer);
  OOD set: neutral sentences from other domains.

Both print a table deterministic vs Bayesian (accuracy, NLL, ECE, Brier, OOD AUROC of the
predictive entropy and of the mutual information, training time) and save reliability
diagrams. A deterministic network's prediction is a one-draw
:class:`~pyrobayes.ppd.CategoricalPPD`; the Bayesian one averages class probabilities
over ``S`` posterior draws,

.. math::

    p(y \\mid x, D) \\approx \\frac1S \\sum_{s=1}^S \\mathrm{softmax}(f_{w_s}(x)),
    \\qquad w_s \\sim q(w).

Command line: ``pyrobayes classify digits`` / ``pyrobayes classify text`` (``--smoke``
for a tiny configuration that runs in seconds).

Modules: :mod:`~pyrobayes.jobs.classify.digits`, :mod:`~pyrobayes.jobs.classify.text` (the two
pipelines), :mod:`~pyrobayes.jobs.classify.result` (scoring tables, report files),
:mod:`~pyrobayes.jobs.classify.cli` (arguments); the deterministic MLP is trained by
:func:`pyrobayes.models.train.train_network`.

Example::

    >>> from pyrobayes.jobs.classify import run_digits
    >>> result = run_digits(smoke=True, progress=False, verbose=False)
    >>> sorted(result.ppds)
    ['bayesian', 'deterministic']
"""

from pyrobayes.jobs.classify.cli import ClassifyDataset, add_arguments, run
from pyrobayes.jobs.classify.digits import run_digits
from pyrobayes.jobs.classify.result import ClassifyResult
from pyrobayes.jobs.classify.text import bayesian_text_ppd, run_text

__all__ = [
    "ClassifyDataset",
    "ClassifyResult",
    "add_arguments",
    "bayesian_text_ppd",
    "run",
    "run_digits",
    "run_text",
]
