"""Objective evaluation of synthesised speech against real recordings."""
