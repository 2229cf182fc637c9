"""Carrying work to a GPU box that has no network, mediapipe or ffmpeg (see tools/gpu/carry.py)."""
