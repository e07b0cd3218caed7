"""The command-line jobs: a file in, a pipeline, a file out.

    generate  text2earth / crsdiff images from requests     (earthsynth generate)
    upscale   ediffsr super-resolution of an image / GeoTIFF (earthsynth upscale)
    denoise   hsi denoising of a hyperspectral cube          (earthsynth denoise)
    augment   layouts -> aerogen -> filter -> datasets       (earthsynth augment)
    load      load_pipeline, bundled_checkpoint, the device and dtype every job uses

The modules import their heavy parts on use; import the one you need.
"""
