"""Integration of trained members into one voice (``polyvox ensemble``)."""
