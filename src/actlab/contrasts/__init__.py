"""Paired-contrast analysis of SAE feature geometry (two conditions over the same prompts)."""
