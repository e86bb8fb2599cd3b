"""Scoring: the same evaluation for every method (likelihood on a named split, image and
vector sample quality) and the costs it measures (time, network evaluations, memory).
Imports the planning floor only.
"""
