"""Deployment entry point for the polyvox pipeline flow (the flow itself lives in polyvox.flow)."""

from polyvox.flow import pipeline

if __name__ == "__main__":
    pipeline()
