"""Tuning records (SQLAlchemy models) and the database they live in, next to Optuna's tables."""
