"""Tests of the plugin API: the manager, its docs, the example plugin. Pure and fast."""
