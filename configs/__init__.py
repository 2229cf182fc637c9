"""The run configs that ship with Being, installed as the package data of ``being_core.configs``.

Select one by name (``being run clip.mp4 -o runs/me -c cpu-small``) or pass a path to your own.
"""
