"""Experiments run by hand; each writes its evidence under docs/results/<name>/."""
