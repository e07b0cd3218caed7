"""The bad-input corpus of tests/test_bad_inputs.py (issue 24): tiny hostile inputs built in code.

    build.py          writers of tiny valid files (images, detection datasets in every format,
                      cubes, configs, an augment output folder) that the cases then break
    augment_cases.py  `earthsynth augment` with each input format and its options
    job_cases.py      `earthsynth denoise`, `upscale` and `generate text2earth|crsdiff`
    run_cases.py      `earthsynth train`, `evaluate` and `data export`

A case is `pytest.param(make, id=...)`: `make(tmp)` builds its inputs under `tmp` and returns
a `Bad`: the command line and what its one-line error must say.
"""

from bad_inputs.build import Bad

__all__ = ["Bad"]
