"""Synthetic labelled datasets: layouts -> aerogen -> filter -> writers, and the detector proof."""
