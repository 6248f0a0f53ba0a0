"""The applications built on the core: the comparison jobs, the classifiers and the CLI.

Nothing in the core (:mod:`pyrobayes.convert`, :mod:`~pyrobayes.priors`,
:mod:`~pyrobayes.likelihoods`, :mod:`~pyrobayes.bayesian_model`, :mod:`~pyrobayes.guides`,
:mod:`~pyrobayes.infer`, :mod:`~pyrobayes.ppd`, :mod:`~pyrobayes.metrics`, ...) imports
from here; the jobs import the core.

* :mod:`~pyrobayes.jobs.cli` -- the ``pyrobayes`` command (subcommands dispatch to the
  modules below).
* :mod:`~pyrobayes.jobs.demo_1d` -- ``pyrobayes compare``: SVI vs PFN vs NUTS/exact GP on
  1-D data drawn from a prior (``run_compare``); with ``--data`` it hands over to:
* :mod:`~pyrobayes.jobs.tabular_regression` -- the real-data regression comparison
  (``run_tabular``), planned by :mod:`~pyrobayes.jobs.tabular_plan`, its SVI recipe in
  :mod:`~pyrobayes.jobs.tabular_svi`, its deep-ensemble / MC-dropout rows in
  :mod:`~pyrobayes.jobs.baselines`;
* :mod:`~pyrobayes.jobs.tabular_classification` -- the same on labelled tables
  (``run_classify_tabular``);
* :mod:`~pyrobayes.jobs.classify` -- ``pyrobayes classify digits|text``.

The main entry points are re-exported from :mod:`pyrobayes` (``run_tabular``,
``run_compare``, ...). The old top-level paths (``pyrobayes.tabular_job``, ``pyrobayes.cli``,
...) still import, with a :class:`DeprecationWarning` (:mod:`pyrobayes._moved`).

Example::

    >>> import pyrobayes
    >>> from pyrobayes.jobs import cli, tabular_regression
    >>> tabular_regression.run_tabular is pyrobayes.run_tabular
    True
    >>> cli.build_parser().parse_args(["compare", "--prior", "gp"]).prior
    'gp'
"""
