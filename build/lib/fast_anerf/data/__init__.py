"""Data: A-NeRF .h5 files, the built-in character, rays."""
