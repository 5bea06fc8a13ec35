"""Finding the fastest correct config per GPU and problem: timing, Optuna studies, workers, lookup tables."""
