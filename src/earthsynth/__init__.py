"""earthsynth."""
