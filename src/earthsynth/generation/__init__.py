"""Model families: one folder each (see earthsynth.registry)."""
