"""Tests of autotune/."""
