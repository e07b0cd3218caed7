"""The Blocks of the demo: one tab per job, a queue, an upload limit."""

from __future__ import annotations

import atexit
import os

import gradio as gr

from earthsynth.app import augment, control, hyperspectral, layout, superres, text2image
from earthsynth.app.common import AppContext

MAX_FILE_SIZE = "200mb"  # per upload
QUEUE_SIZE = 16  # requests waiting beyond this are refused ("queue full") instead of piling up
# system fonts: the default theme fetches Google fonts, which an offline machine cannot reach
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])

INTRO = ("# earthsynth\n"
         "Synthesise remote-sensing data with conditional diffusion models. Each tab runs one job with "
         "the bundled models (or those of `--model-dir`) on this machine; requests run one at a time.")


def build_app(ctx: AppContext) -> gr.Blocks:
    """The demo's Blocks, queued (one job at a time), with `ctx`'s models and folders."""
    # delete_cache: gradio's hourly sweep of what it cached over a day ago, for uploads that no
    # job read (those a job read go with its session)
    with gr.Blocks(title="earthsynth", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Layout", id="layout"):
                layout.build(ctx)
            with gr.Tab("Hyperspectral", id="hyperspectral"):
                hyperspectral.build(ctx)
            with gr.Tab("Super-resolution", id="super-resolution"):
                superres.build(ctx)
            with gr.Tab("Augment", id="augment"):
                augment.build(ctx)
            with gr.Tab("Text to image", id="text-to-image"):
                text2image.build(ctx)
            with gr.Tab("Control", id="control"):
                control.build(ctx)
        demo.unload(ctx.close_session)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def launch_app(host: str = "127.0.0.1", port: int = 7860, model_dir: str | os.PathLike | None = None,
               max_file_size: str | int = MAX_FILE_SIZE, block: bool = True) -> tuple[gr.Blocks, AppContext]:
    """Serve the demo at http://host:port/. block=False returns once it is serving (tests);
    close it with `demo.close()` and `ctx.remove_all()`.

    block=True serves until Ctrl+C or SIGTERM (the command line): this process is the app's
    then, so it writes every file for its user alone (umask 077: gradio's cache, uploads and
    the jobs' outputs, 0600 files in 0700 folders), and on the way out everything goes."""
    ctx = AppContext(model_dir)
    atexit.register(ctx.remove_all)  # also when the process ends without coming back here
    umask = os.umask(0o077) if block else None
    demo, serving = None, False
    try:
        demo = build_app(ctx)
        demo.launch(server_name=host, server_port=port, max_file_size=max_file_size, prevent_thread_lock=not block,
                    show_error=False, ssr_mode=False, quiet=not block, theme=THEME, footer_links=["api"])
        serving = not block
    finally:
        if not serving:  # stopped (Ctrl+C returns, SIGTERM's SystemExit passes here) or never started
            if demo is not None:
                demo.close()
            ctx.remove_all()
            if umask is not None:
                os.umask(umask)
    return demo, ctx
