"""Gymnasium environments with the project's conventions."""
