"""Feedback without people: rule-based simulated annotators, judges and their shared interface."""
