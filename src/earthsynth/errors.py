"""Errors a user can act on: each names the file (or input) and the problem in one line."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input: a malformed annotation, a box outside the image, a NaN in a cube...

    `str(err)` is the one line the CLI prints: ``<file>: <problem>``.
    """

    def __init__(self, source: str | os.PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)
