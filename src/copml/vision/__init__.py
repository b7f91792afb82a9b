"""Image data and models for copml's x-ray application (optional extra: copml[vision])."""
