"""Surprise triage across a cohort: the ranking of ``nemesis triage`` in a dock, a click opens the scan
at the superpatch with its reconstruction and error map."""
