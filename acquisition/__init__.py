"""Acquisition: live LSL inlets and real-time replay of recorded biosignals (no torch)."""
