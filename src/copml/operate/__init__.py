"""Continuous operations: policies, actions, alerts, scheduling."""
