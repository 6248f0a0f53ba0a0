"""The NUTS reference posterior in one place.

* :mod:`~pyrobayes.infer.nuts.sampler` -- :func:`nuts_ppd` (the PPD of NUTS draws, built
  like the SVI one), the Pyro and NumPyro drivers, :class:`NUTSInfo`, :func:`nuts_diagnostics`;
* ``pyrobayes.infer.nuts.potential`` (internal, not in the API reference) -- the trace-free
  torch potential (the negative log joint over one flat unconstrained vector) that Pyro's
  NUTS runs on;
* :mod:`~pyrobayes.infer.nuts.jax_potential` -- the same log joint compiled with JAX for
  NumPyro's NUTS (optional extra ``nuts``), tested equal to the torch one.

Example (the names are the sampler's)::

    >>> from pyrobayes.infer import nuts
    >>> from pyrobayes.infer.nuts import sampler
    >>> nuts.nuts_ppd is sampler.nuts_ppd, [b.value for b in nuts.NUTSBackend]
    (True, ['auto', 'numpyro', 'pyro'])
"""

from pyrobayes.infer.nuts.sampler import NUTSBackend, NUTSInfo, nuts_diagnostics, nuts_ppd

__all__ = ["NUTSBackend", "NUTSInfo", "nuts_diagnostics", "nuts_ppd"]
