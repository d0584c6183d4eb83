"""smoothviz: certified robustness by randomized smoothing, constant and input-dependent sigma.

The package is a plain library (numpy, scipy, torch); the Streamlit dashboard in ``app.py`` and
``pages/`` is a thin view over it, and ``python -m smoothviz`` exposes the same operations.
"""

__version__ = "0.1.0"
