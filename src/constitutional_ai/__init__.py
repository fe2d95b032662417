"""constitutional-ai: Constitutional AI (Bai et al. 2022) end to end on your own models."""

__version__ = "0.1.0"
