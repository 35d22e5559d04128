"""bench: an AutoML benchmarking harness for transfer learning on medical images."""

__version__ = "0.1.0"
