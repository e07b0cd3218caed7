"""Long jobs of the demo (augment, denoise, upscale) in a child process.

The app starts `python -m earthsynth.app.jobs FOLDER/job.json`; the child runs the same file
function the command line runs and writes FOLDER/result.json: {"ok": true, "result": ...}
or {"ok": false, "error": "<the one-line InputError>"}. A child process, not a thread, so that
Stop ends the work at once (a Python thread cannot be interrupted) and a crash in a job
cannot take the server down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from earthsynth.data.common import atomic_write
from earthsynth.errors import InputError


# ----------------------------------------------------------------------------- in the child
def run_augment_job(out: str, settings: dict, data: str | None = None, fmt: str | None = None) -> dict:
    """`earthsynth augment` with the settings tree of the augment config; returns its summary."""
    from earthsynth.config import from_dict
    from earthsynth.jobs.augment import AugmentConfig, run_augment

    config = from_dict(AugmentConfig, settings, "augment")
    return run_augment(out, config, data=data, fmt=fmt, show_progress=False)


def run_denoise_job(**kwargs) -> str:
    from earthsynth.jobs.denoise import denoise_file

    return str(denoise_file(**kwargs))


def run_upscale_job(**kwargs) -> str:
    from earthsynth.jobs.upscale import upscale_file

    return str(upscale_file(**kwargs))


JOBS = {"augment": run_augment_job, "denoise": run_denoise_job, "upscale": run_upscale_job}


def child_main(spec_path: str) -> int:
    """Run the job described in `spec_path` and write result.json beside it."""
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text())
    try:
        outcome = {"ok": True, "result": JOBS[spec["job"]](**spec["kwargs"])}
    except InputError as err:
        outcome = {"ok": False, "error": str(err)}
    except Exception as err:  # a bug, not the user's input: keep the traceback in job.log
        traceback.print_exc()
        outcome = {"ok": False, "error": f"the {spec['job']} job failed ({' '.join(str(err).split())})",
                   "internal": True}
    with atomic_write(spec_path.with_name("result.json")) as f:  # the app never reads half a result
        json.dump(outcome, f)
    return 0 if outcome["ok"] else 1


# ----------------------------------------------------------------------------- in the app
RUNNING: set[ChildJob] = set()  # jobs started and not yet seen to end, stopped when the app exits


def stop_all(under: Path | None = None) -> None:
    """End every job still running (the app is shutting down), or those whose folder is
    under `under` (a session that ended)."""
    for job in list(RUNNING):
        if under is None or job.folder.is_relative_to(under):
            job.stop()


class ChildJob:
    """One job running in a child process, its files in `folder`."""

    def __init__(self, job: str, kwargs: dict, folder: Path):
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}")
        self.job = job
        self.folder = Path(folder)
        self.started = time.monotonic()
        spec = self.folder / "job.json"
        spec.write_text(json.dumps({"job": job, "kwargs": kwargs}))
        env = dict(os.environ)
        # every model loads from a local folder, as on the command line
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        with open(self.folder / "job.log", "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "earthsynth.app.jobs", str(spec)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        RUNNING.add(self)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        """End the child now (Stop, a closed page, or an error in the app)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        RUNNING.discard(self)

    def result(self):
        """The job's return value once it has ended; its InputError (or failure) re-raised."""
        self.process.wait()
        RUNNING.discard(self)
        path = self.folder / "result.json"
        outcome = json.loads(path.read_text()) if path.exists() else None
        if outcome is None or outcome.get("internal"):
            # for whoever runs the server: the user sees one line, the log has the traceback
            log_tail = (self.folder / "job.log").read_text(errors="replace")[-3000:]
            print(f"earthsynth app: the {self.job} job ended with code {self.process.returncode}:\n{log_tail}",
                  file=sys.stderr)
        if outcome is None:
            raise InputError(None, f"the {self.job} job stopped unexpectedly (exit code {self.process.returncode})")
        if not outcome["ok"]:
            raise InputError(None, outcome["error"])
        return outcome["result"]


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
