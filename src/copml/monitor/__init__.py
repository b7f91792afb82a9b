"""Monitoring: metric windows over predictions, ground truth, KPIs and drift; requirement status."""
