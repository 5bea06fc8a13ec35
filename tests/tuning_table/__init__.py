"""Tests of tuning_table/."""
