"""Similarity search: the superpatches of other scans nearest to the selected one in the encoder's
feature space (``nemesis similar``), listed in the Triage dock; a click shows the neighbour beside
the main canvas."""
