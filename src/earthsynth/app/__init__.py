"""The Gradio demo served by `earthsynth app`: one tab per job (layout-to-image,
hyperspectral denoising, super-resolution, dataset augmentation, text to image, control
maps), thin over the pipelines and the file functions of the command line.

    from earthsynth.app import launch_app
    demo, ctx = launch_app("127.0.0.1", 7860, model_dir=None)

Endpoints (for gradio_client): /layout_preview, /layout_random, /layout_generate,
/hsi_denoise, /hsi_spectrum, /sr_upscale, /augment_run, /text2image_generate, /control_generate
(a tab whose model is missing has none).
"""

__all__ = ["build_app", "launch_app"]

# the pipeline folders `--model-dir` may hold, one per tab that runs a model
MODEL_FAMILIES = ("aerogen", "hsi", "ediffsr", "text2earth", "crsdiff")


def __getattr__(name: str):
    # imported on use: the job child processes (earthsynth.app.jobs) must not pay for gradio
    if name in __all__:
        from earthsynth.app import ui

        return getattr(ui, name)
    raise AttributeError(f"module 'earthsynth.app' has no attribute {name!r}")
