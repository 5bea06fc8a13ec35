"""Tests of search_spaces/."""
