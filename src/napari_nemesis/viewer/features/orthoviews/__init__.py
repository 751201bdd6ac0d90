"""Linked orthogonal views: the two planes the main canvas does not show, beside it."""
