"""bench: a benchmark harness for continuous-time generative models.

Importing the package is cheap: torch and mlflow are imported only by the modules
that need them.
"""

__version__ = "0.1.0"
