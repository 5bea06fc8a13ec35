"""Tests of the command line (nvc_cli/), the packaging and the layer rule."""
