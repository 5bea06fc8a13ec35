"""Tests of dashboard/."""
