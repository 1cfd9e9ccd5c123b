"""Exceptions that mean "the input or the run is at fault", not "hybridpot has a bug".

The ``hybridpot`` command prints these as one line on stderr and exits with code 2; any other
exception is an internal error and keeps its traceback. Library code raises:

- ``ValueError`` (or :class:`InputError`, a subclass) for a bad argument, config value, or file
  content; the message names the argument, the expected and the actual value;
- ``OSError`` (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``, a full disk) for
  files that cannot be read or written; the message names the path;
- :class:`HybridpotError` subclasses for a run that stopped for a reason the user can act on
  (:class:`TrainingDiverged`; ``SimulationUnstable`` and ``ExtrapolationError`` in
  :mod:`hybridpot.openmm`, which the command maps to exit codes 3 and 4).
"""

from __future__ import annotations


class HybridpotError(Exception):
    """Base of the run-time failures that carry a message for the user and need no traceback."""


class InputError(HybridpotError, ValueError):
    """Bad input: an argument, config value or file content that hybridpot cannot use."""


class TrainingDiverged(HybridpotError, FloatingPointError):
    """The training loss became NaN or infinite (learning rate too high, or bad labels)."""
