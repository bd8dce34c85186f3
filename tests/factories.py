"""Factories shared by the tests: plain functions that create saved model rows."""
