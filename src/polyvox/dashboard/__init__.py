"""The run-history dashboard (``polyvox dashboard``)."""
