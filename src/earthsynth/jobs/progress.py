"""The progress bar of a long job: one tqdm bar on stderr over the work the job does.

The pipelines' own per-step bars stay off; instead, while a pipeline runs inside
`JobProgress.steps`, every denoising step it takes through diffusers' `progress_bar` moves
the job's bar, so a long call shows progress too. A pipeline that reports no steps moves
the bar when its call ends.
"""

from __future__ import annotations

import contextlib
import sys

from tqdm.auto import tqdm


class JobProgress:
    def __init__(self, total: int | None, desc: str, unit: str = "step", disable: bool = False, initial: int = 0):
        self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=sys.stderr,
                        dynamic_ncols=True)
        self.done = initial  # counted here too: a disabled tqdm bar counts nothing

    def update(self, count: int = 1) -> None:
        self.done += count
        self.bar.update(count)

    @contextlib.contextmanager
    def steps(self, pipe, count: int):
        """Run a pipeline call expected to take `count` steps: its steps move this bar (at most
        `count` of them), and whatever it did not report is added when the call ends."""
        end = self.done + count

        def step():
            if self.done < end:
                self.update(1)

        pipe.progress_bar = lambda iterable=None, total=None: StepCounter(step, iterable, total)
        try:
            yield
        finally:
            del pipe.progress_bar  # back to the class's method (the app reuses its pipelines)
        if self.done < end:
            self.update(end - self.done)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepCounter:
    """What diffusers' `progress_bar(iterable)` / `progress_bar(total=n)` return, drawing
    nothing: each step taken calls `step`."""

    def __init__(self, step, iterable=None, total=None):
        if iterable is None and total is None:
            raise ValueError("Either `total` or `iterable` has to be defined.")
        self.step, self.iterable = step, iterable

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.step()

    def update(self, count: int = 1) -> None:
        for _ in range(count):
            self.step()

    def __enter__(self) -> StepCounter:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass
