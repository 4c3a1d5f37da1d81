"""Tests of the simulated ComfyUI server (sidecar.simulator)."""
