"""Sampling along rays and volume rendering."""
