"""smoke: a tiny text + GSD conditioned pixel-space diffusion model that exercises the shared
pieces end to end in under a minute on a CPU. It has no pipeline of its own; train.py holds
the family ("smoke" in the registry)."""
