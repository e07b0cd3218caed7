"""GPU check for the jobs and the attention switches (issue 21), to run on a lent CUDA machine:

    python scripts/gpu_check_jobs.py --out $OUT        # about 3-5 minutes on one GPU

It needs the project installed (diffusers, rasterio and pycocotools wheels carried if the
machine lacks them) and MiniLM reachable (the bundled text encoder). It prints:
1. the bundled aerogen pipeline on CUDA in float32 and bfloat16: s/image, and for every
   attention switch (SDPA default, slicing, set_default_attn_processor, xformers when
   importable) the largest difference to the default output and whether moving the boxes
   still changes the image (the layout is still attended to);
2. `earthsynth augment --demo` on CUDA with 8 images: wall time and where the models ran.
Nothing here is needed by the tests or the demo; it only reports.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

from earthsynth.jobs.load import load_pipeline

BOXES = [[4, 4, 20, 22], [40, 30, 12, 8, 30.0]]
MOVED = [[30, 30, 46, 48], [14, 10, 12, 8, 30.0]]


def generate(pipe, boxes, dtype):
    generator = torch.Generator("cpu").manual_seed(0)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        return pipe("aerial orthophoto, 0.2 m/px, 2 trees", boxes=boxes, labels=["Tree", "Tree"],
                    num_inference_steps=20, generator=generator, output_type="pt").images.float()


def attention_switches(dtype) -> None:
    pipe = load_pipeline("aerogen", device="cuda", dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    generate(pipe, BOXES, dtype)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    reference = generate(pipe, BOXES, dtype)
    torch.cuda.synchronize()
    print(f"aerogen {dtype}: {time.perf_counter() - start:.3f} s/image (20 steps, guidance 4)")
    switches = [("attention slicing", pipe.enable_attention_slicing, pipe.disable_attention_slicing),
                ("set_default_attn_processor", pipe.unet.set_default_attn_processor, None)]
    if importlib.util.find_spec("xformers") is not None:
        switches.append(("xformers", pipe.enable_xformers_memory_efficient_attention,
                         pipe.disable_xformers_memory_efficient_attention))
    else:
        print("  xformers: not importable here, not checked")
    for name, switch_on, switch_off in switches:
        try:
            switch_on()
            out, moved = generate(pipe, BOXES, dtype), generate(pipe, MOVED, dtype)
            print(f"  {name}: max |diff| to default {float((out - reference).abs().max()):.2e}; "
                  f"layout still effective: {bool((out - moved).abs().mean() > 1e-3)}")
        except Exception as err:  # a report, not a test: say what failed and go on
            print(f"  {name}: FAILED {type(err).__name__}: {err}")
        finally:
            if switch_off is not None:
                switch_off()


def augment_on_cuda(out: Path) -> None:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "earthsynth.cli", "augment", "--demo", "--num-images", "8",
                             "--device", "cuda", "--out", str(out / "augment-cuda")],
                            capture_output=True, text=True)
    print(f"augment --demo --num-images 8 --device cuda: exit {result.returncode}, "
          f"{time.perf_counter() - start:.1f} s wall")
    print("  " + (result.stdout.strip().splitlines() or [""])[-1])
    if result.returncode:
        print("  " + result.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check_jobs: no CUDA device here")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        attention_switches(dtype)
    augment_on_cuda(args.out)


if __name__ == "__main__":
    main()
