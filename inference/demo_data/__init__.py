"""Shipped demo data: a real ECG recording with known artefacts and a pre-trained bundle."""
