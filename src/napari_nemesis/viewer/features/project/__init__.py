"""The Project dock: a labelling project's scans, what is left to label, the next scan."""
